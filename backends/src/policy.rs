//! Loading a device's seccomp policy: the single integration point with `cordon-seccomp`.

use crate::sandbox::SandboxConfig;

/// Compiles and installs policy `name` (e.g. `rng_device_vhost_user`) for this process.
///
/// Integration point with `cordon-seccomp`: until its compiler and installer are on main this
/// only checks that a policy directory, when given, holds the file, and logs that no filter
/// was installed.
pub fn install(name: &str, config: &SandboxConfig) -> anyhow::Result<()> {
    if let Some(dir) = &config.policy_dir {
        let path = dir.join(format!("{name}.policy"));
        if !path.is_file() {
            anyhow::bail!(
                "seccomp policy `{}` not found (--seccomp-policy-dir {})",
                path.display(),
                dir.display()
            );
        }
    }
    log::warn!(
        "seccomp policy {name}: the filter compiler is not integrated yet; no filter installed"
    );
    Ok(())
}
