//! vCPU-loop tests with tiny 64-bit guest code on the host's real /dev/kvm.

use super::*;

const CODE_ADDR: u64 = 0x10_0000;

fn vm(out: Arc<Mutex<Vec<u8>>>) -> Vm {
    Vm::new(VmConfig {
        mem_mib: 32,
        cpus: 1,
        console: ConsoleOutput::Buffer(out),
        console_input: false,
    })
    .expect("KVM VM (needs /dev/kvm)")
}

/// `mov dx,0x3f8; mov al,c; out dx,al` for each byte of `s`.
fn print(s: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03];
    for b in s {
        c.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    c
}

#[test]
fn guest_code_prints_on_serial_then_resets_through_i8042() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut vm = vm(out.clone());
    let mut code = print(b"HELLO\n");
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // mov al,0xfe; out 0x64,al; hlt
    vm.load_code(CODE_ADDR, &code).unwrap();
    let r = vm.run();
    assert_eq!(r, ExitReason::GuestReset);
    assert_eq!(r.exit_code(), 0);
    assert_eq!(lock(&out).as_slice(), b"HELLO\n");
}

#[test]
fn long_mode_is_active_at_entry() {
    // Reads EFER (MSR 0xc0000080) and prints 'L' if LMA (bit 10) is set, else 'N'.
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut vm = vm(out.clone());
    let mut code = vec![
        0xb9, 0x80, 0x00, 0x00, 0xc0, // mov ecx, 0xc0000080
        0x0f, 0x32, // rdmsr
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa9, 0x00, 0x04, 0x00, 0x00, // test eax, 0x400
        0xb0, b'N', // mov al,'N'
        0x74, 0x02, // jz +2
        0xb0, b'L', // mov al,'L'
        0xee, // out dx, al
    ];
    // A 64-bit-only instruction: REX.W mov rax, imm64; prints its low byte.
    code.extend_from_slice(&[0x48, 0xb8, b'6', 0, 0, 0, 0, 0, 0, 0x01, 0xee]);
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    vm.load_code(CODE_ADDR, &code).unwrap();
    assert_eq!(vm.run(), ExitReason::GuestReset);
    assert_eq!(lock(&out).as_slice(), b"L6");
}

#[test]
fn halt_with_interrupts_off_and_unknown_ports_do_not_crash() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut vm = vm(out.clone());
    let code = vec![
        0xfa, // cli
        0xe4, 0x99, // in al, 0x99 (no device: reads 0xff)
        0x3c, 0xff, // cmp al, 0xff
        0x75, 0x05, // jne +5 -> skip the print
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al (0xff)
        0xe6, 0x98, // out 0x98, al (no device)
        0xf4, // hlt
    ];
    vm.load_code(CODE_ADDR, &code).unwrap();
    // With the in-kernel LAPIC a vCPU halted with IF=0 never wakes and never exits to
    // the VMM: the VM must still be stoppable from outside (as `cordon stop` does).
    let exit = vm.exit_signal();
    let watch = out.clone();
    let stopper = std::thread::spawn(move || {
        while lock(&watch).is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        exit.request(ExitReason::Stopped);
    });
    assert_eq!(vm.run(), ExitReason::Stopped);
    stopper.join().unwrap();
    assert_eq!(lock(&out).as_slice(), &[0xff]);
}

#[test]
fn acpi_s5_write_powers_the_vm_off() {
    // mov ax, (5 << 10) | (1 << 13); mov dx, 0x604; out dx, ax; hlt
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut vm = vm(out);
    let code = [
        0x66, 0xb8, 0x00, 0x34, 0x66, 0xba, 0x04, 0x06, 0x66, 0xef, 0xf4,
    ];
    vm.load_code(CODE_ADDR, &code).unwrap();
    let r = vm.run();
    assert_eq!(r, ExitReason::PowerOff);
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn acpi_tables_are_in_guest_memory_for_every_vcpu() {
    let vm = Vm::new(VmConfig {
        mem_mib: 32,
        cpus: 3,
        console: ConsoleOutput::Sink,
        console_input: false,
    })
    .expect("KVM VM (needs /dev/kvm)");
    let mem = vm.memory();
    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, GuestAddress(acpi::RSDP_ADDR))
        .unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    let xsdt = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    let madt: u64 = mem.read_obj(GuestAddress(xsdt + 44)).unwrap();
    let mut hdr = [0u8; 8];
    mem.read_slice(&mut hdr, GuestAddress(madt)).unwrap();
    assert_eq!(&hdr[..4], b"APIC");
    let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
    let mut m = vec![0u8; len];
    mem.read_slice(&mut m, GuestAddress(madt)).unwrap();
    assert_eq!(m, acpi::madt(3));
}
