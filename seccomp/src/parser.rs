//! Minijail policy syntax parser.
//!
//! ```text
//! # comment
//! @include ./common_device.policy     (one level only, path relative to this file)
//! @frequency ./device.frequency       (`syscall: count` lines)
//! read: 1
//! mmap: arg2 in ~PROT_EXEC
//! madvise: arg2 == MADV_DONTNEED || arg2 == MADV_REMOVE
//! ioctl: arg1 == TCGETS; return ENOTTY
//! open: return EPERM
//! ```

use crate::arch::Arch;
use crate::policy::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong while parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A syscall name the architecture does not have.
    UnknownSyscall(String),
    /// A constant name not in the tables.
    UnknownConstant(String),
    /// Malformed line.
    Syntax(String),
    /// `@include` inside an included file.
    IncludeDepth(String),
    /// A file that cannot be read.
    MissingFile(String, String),
    /// A syscall listed twice.
    DuplicateSyscall(String, String),
}

/// A parse error located at `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// File being parsed.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The problem.
    pub kind: ErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        match &self.kind {
            ErrorKind::UnknownSyscall(s) => write!(f, "unknown syscall '{s}'"),
            ErrorKind::UnknownConstant(s) => write!(f, "unknown constant '{s}'"),
            ErrorKind::Syntax(s) => write!(f, "syntax error: {s}"),
            ErrorKind::IncludeDepth(p) => write!(
                f,
                "@include of '{p}' from an included file: only one level of @include is allowed"
            ),
            ErrorKind::MissingFile(p, e) => write!(f, "cannot read '{p}': {e}"),
            ErrorKind::DuplicateSyscall(s, first) => {
                write!(f, "duplicate syscall '{s}' (first defined at {first})")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads files for the parser (lets tests and fuzzers parse without a filesystem).
pub trait FileSource {
    /// Returns the contents of `path`.
    fn read(&self, path: &Path) -> Result<String, String>;
}

/// Reads from the real filesystem.
pub struct RealFs;

impl FileSource for RealFs {
    fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

/// Parses the policy file at `path` for `arch`.
pub fn parse_file(path: &Path, arch: Arch) -> Result<Policy, ParseError> {
    parse_with(path, arch, &RealFs)
}

/// Parses `text` as if it were the file `path` (includes are read from the filesystem).
pub fn parse_str(path: &Path, text: &str, arch: Arch) -> Result<Policy, ParseError> {
    let mut p = Parser::new(arch, &RealFs);
    p.parse_text(path, text, 0)?;
    Ok(p.finish())
}

/// Parses `path` reading every file through `fs`.
pub fn parse_with(path: &Path, arch: Arch, fs: &dyn FileSource) -> Result<Policy, ParseError> {
    let text = fs.read(path).map_err(|e| ParseError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        kind: ErrorKind::MissingFile(path.display().to_string(), e),
    })?;
    let mut p = Parser::new(arch, fs);
    p.parse_text(path, &text, 0)?;
    Ok(p.finish())
}

struct Parser<'a> {
    arch: Arch,
    fs: &'a dyn FileSource,
    rules: Vec<Rule>,
    seen: HashMap<u32, usize>,
    frequency: BTreeMap<u32, u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Num(u64),
    Op(&'static str),
}

struct Lexed {
    toks: Vec<(Tok, usize)>,
    end_col: usize,
}

struct LineCtx<'p> {
    file: &'p Path,
    line: usize,
}

impl LineCtx<'_> {
    fn err(&self, col: usize, kind: ErrorKind) -> ParseError {
        ParseError {
            file: self.file.to_path_buf(),
            line: self.line,
            col,
            kind,
        }
    }
    fn syntax(&self, col: usize, msg: impl Into<String>) -> ParseError {
        self.err(col, ErrorKind::Syntax(msg.into()))
    }
}

const OPS: [&str; 14] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "&", "|", "~", ";", ":", ",",
];

fn lex(ctx: &LineCtx, s: &str) -> Result<Lexed, ParseError> {
    let b = s.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let col = i + 1;
        if c == b' ' || c == b'\t' || c == b'\r' {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-') {
                i += 1;
            }
            toks.push((Tok::Ident(s[st..i].to_string()), col));
        } else if c.is_ascii_digit() {
            let st = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let t = &s[st..i];
            let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                u64::from_str_radix(h, 16)
            } else if t.len() > 1 && t.starts_with('0') {
                u64::from_str_radix(&t[1..], 8)
            } else {
                t.parse::<u64>()
            };
            let v = v.map_err(|_| ctx.syntax(col, format!("invalid number '{t}'")))?;
            toks.push((Tok::Num(v), col));
        } else {
            let op = OPS.iter().find(|op| s[i..].starts_with(**op));
            match op {
                Some(op) => {
                    toks.push((Tok::Op(op), col));
                    i += op.len();
                }
                None => {
                    let ch = s[i..].chars().next().unwrap_or('?');
                    return Err(ctx.syntax(col, format!("unexpected character '{ch}'")));
                }
            }
        }
    }
    Ok(Lexed {
        toks,
        end_col: b.len() + 1,
    })
}

struct Cursor<'t, 'c, 'p> {
    toks: &'t [(Tok, usize)],
    pos: usize,
    end_col: usize,
    ctx: &'c LineCtx<'p>,
    arch: Arch,
}

impl Cursor<'_, '_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn col(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.1).unwrap_or(self.end_col)
    }
    fn next(&mut self) -> Option<(Tok, usize)> {
        let t = self.toks.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// value := term ('|' term)*
    fn value(&mut self) -> Result<u64, ParseError> {
        let mut v = self.term()?;
        while self.eat_op("|") {
            v |= self.term()?;
        }
        Ok(v)
    }

    /// term := '~' term | NUMBER | CONSTANT
    fn term(&mut self) -> Result<u64, ParseError> {
        let col = self.col();
        match self.next() {
            Some((Tok::Op("~"), _)) => Ok(!self.term()?),
            Some((Tok::Num(n), _)) => Ok(n),
            Some((Tok::Ident(name), _)) => self
                .arch
                .constant(&name)
                .ok_or_else(|| self.ctx.err(col, ErrorKind::UnknownConstant(name))),
            Some((t, _)) => Err(self.ctx.syntax(
                col,
                format!("expected a number or constant, found {}", show(&t)),
            )),
            None => Err(self
                .ctx
                .syntax(col, "expected a number or constant, found end of line")),
        }
    }

    /// atom := 'argN' OP value
    fn atom(&mut self) -> Result<Atom, ParseError> {
        let col = self.col();
        let arg = match self.next() {
            Some((Tok::Ident(id), _)) => {
                match id.strip_prefix("arg").and_then(|n| n.parse::<u8>().ok()) {
                    Some(n) if n < 6 && id.len() == 4 => n,
                    _ => {
                        return Err(self.ctx.syntax(
                            col,
                            format!("expected an argument arg0..arg5, found '{id}'"),
                        ))
                    }
                }
            }
            Some((t, _)) => {
                return Err(self.ctx.syntax(
                    col,
                    format!("expected an argument arg0..arg5, found {}", show(&t)),
                ))
            }
            None => return Err(self.ctx.syntax(col, "expected an argument arg0..arg5")),
        };
        let col = self.col();
        let op = match self.next() {
            Some((Tok::Op(o), _)) => match o {
                "==" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                ">=" => CmpOp::Ge,
                "&" => CmpOp::MaskedAny,
                _ => {
                    return Err(self.ctx.syntax(
                        col,
                        format!("expected an operator (== != < <= > >= & in), found '{o}'"),
                    ))
                }
            },
            Some((Tok::Ident(id), _)) if id == "in" => CmpOp::In,
            _ => {
                return Err(self
                    .ctx
                    .syntax(col, "expected an operator (== != < <= > >= & in)"))
            }
        };
        let value = self.value()?;
        Ok(Atom { arg, op, value })
    }

    /// expr := and ('||' and)* ; and := atom ('&&' atom)*
    fn expr(&mut self) -> Result<Vec<Vec<Atom>>, ParseError> {
        let mut clauses = Vec::new();
        loop {
            let mut clause = vec![self.atom()?];
            while self.eat_op("&&") {
                clause.push(self.atom()?);
            }
            clauses.push(clause);
            if !self.eat_op("||") {
                return Ok(clauses);
            }
        }
    }

    /// `return` value, as an errno.
    fn errno(&mut self) -> Result<Action, ParseError> {
        let col = self.col();
        let v = self.value()?;
        if v > MAX_ERRNO as u64 {
            return Err(self
                .ctx
                .syntax(col, format!("errno {v} out of range (0..={MAX_ERRNO})")));
        }
        Ok(Action::Errno(v as u16))
    }

    fn expect_end(&self) -> Result<(), ParseError> {
        match self.toks.get(self.pos) {
            None => Ok(()),
            Some((t, col)) => Err(self
                .ctx
                .syntax(*col, format!("unexpected {} after the expression", show(t)))),
        }
    }

    /// body := '1' | 'return' errno | action-word | expr [';' 'return' errno]
    fn body(&mut self) -> Result<Filter, ParseError> {
        let always = |action| Filter {
            clauses: vec![vec![]],
            action,
            otherwise: None,
        };
        let col = self.col();
        let f = match self.peek().cloned() {
            None => return Err(self.ctx.syntax(col, "missing expression after ':'")),
            Some(Tok::Num(1)) if self.toks.len() == self.pos + 1 => {
                self.pos += 1;
                always(Action::Allow)
            }
            Some(Tok::Ident(w)) if w == "return" => {
                self.pos += 1;
                always(self.errno()?)
            }
            Some(Tok::Ident(w)) if !w.starts_with("arg") || w.len() != 4 => {
                let a = match w.as_str() {
                    "allow" => Action::Allow,
                    "kill" | "kill-process" => Action::KillProcess,
                    "kill-thread" => Action::KillThread,
                    "trap" => Action::Trap,
                    "log" => Action::Log,
                    "user-notify" => Action::UserNotif,
                    _ => {
                        return Err(self.ctx.syntax(
                            col,
                            format!("expected '1', 'return ERRNO', an action (allow, kill, kill-thread, trap, log, user-notify) or an argument test, found '{w}'"),
                        ))
                    }
                };
                self.pos += 1;
                always(a)
            }
            Some(_) => {
                let clauses = self.expr()?;
                let otherwise = if self.eat_op(";") {
                    let col = self.col();
                    match self.next() {
                        Some((Tok::Ident(w), _)) if w == "return" => Some(self.errno()?),
                        _ => return Err(self.ctx.syntax(col, "expected 'return ERRNO' after ';'")),
                    }
                } else {
                    None
                };
                Filter {
                    clauses,
                    action: Action::Allow,
                    otherwise,
                }
            }
        };
        self.expect_end()?;
        Ok(f)
    }
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Num(n) => format!("'{n}'"),
        Tok::Op(o) => format!("'{o}'"),
    }
}

/// Resolves an `@include`/`@frequency` path against the including file's directory. An
/// absolute path that does not exist (crosvm's `/usr/share/policy/...`) falls back to the
/// file of the same name next to the including file.
fn resolve(from: &Path, target: &str, fs: &dyn FileSource) -> PathBuf {
    let dir = from.parent().unwrap_or(Path::new("."));
    let t = Path::new(target);
    if t.is_absolute() {
        if fs.read(t).is_err() {
            if let Some(name) = t.file_name() {
                let local = dir.join(name);
                if fs.read(&local).is_ok() {
                    return local;
                }
            }
        }
        t.to_path_buf()
    } else {
        dir.join(t)
    }
}

/// Strips a trailing `#` comment.
fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => &line[..i],
        None => line,
    }
}

impl<'a> Parser<'a> {
    fn new(arch: Arch, fs: &'a dyn FileSource) -> Self {
        Parser {
            arch,
            fs,
            rules: Vec::new(),
            seen: HashMap::new(),
            frequency: BTreeMap::new(),
        }
    }

    fn finish(self) -> Policy {
        Policy {
            arch: self.arch,
            rules: self.rules,
            frequency: self.frequency,
        }
    }

    fn read(&self, ctx: &LineCtx, col: usize, path: &Path) -> Result<String, ParseError> {
        self.fs
            .read(path)
            .map_err(|e| ctx.err(col, ErrorKind::MissingFile(path.display().to_string(), e)))
    }

    fn directive_arg<'l>(
        ctx: &LineCtx,
        line: &'l str,
        word: &str,
    ) -> Result<(&'l str, usize), ParseError> {
        let rest = &line[word.len()..];
        let trimmed = rest.trim_start();
        let col = line.len() - trimmed.len() + 1;
        let arg = trimmed.trim_end();
        if arg.is_empty() || !rest.starts_with([' ', '\t']) {
            return Err(ctx.syntax(col, format!("{word} needs a file path")));
        }
        if arg.contains([' ', '\t']) {
            return Err(ctx.syntax(col, format!("{word} takes exactly one path")));
        }
        Ok((arg, col))
    }

    fn parse_text(&mut self, file: &Path, text: &str, depth: usize) -> Result<(), ParseError> {
        for (i, raw) in text.lines().enumerate() {
            let ctx = LineCtx { file, line: i + 1 };
            let line = strip_comment(raw);
            let indent = line.len() - line.trim_start().len();
            let body = line.trim();
            if body.is_empty() {
                continue;
            }
            if let Some(dir) = body.strip_prefix('@') {
                let word = dir.split([' ', '\t']).next().unwrap_or("");
                let full = &line[indent..];
                match word {
                    "include" => {
                        let (arg, col) = Self::directive_arg(&ctx, full, "@include")?;
                        let col = col + indent;
                        if depth >= 1 {
                            return Err(ctx.err(col, ErrorKind::IncludeDepth(arg.to_string())));
                        }
                        let path = resolve(file, arg, self.fs);
                        let inc = self.read(&ctx, col, &path)?;
                        self.parse_text(&path, &inc, depth + 1)?;
                    }
                    "frequency" => {
                        let (arg, col) = Self::directive_arg(&ctx, full, "@frequency")?;
                        let col = col + indent;
                        let path = resolve(file, arg, self.fs);
                        let freq = self.read(&ctx, col, &path)?;
                        self.parse_frequency(&path, &freq)?;
                    }
                    _ => {
                        return Err(ctx.syntax(
                            indent + 1,
                            format!(
                                "unknown directive '@{word}' (expected @include or @frequency)"
                            ),
                        ))
                    }
                }
                continue;
            }
            let lexed = lex(&ctx, line)?;
            let mut cur = Cursor {
                toks: &lexed.toks,
                pos: 0,
                end_col: lexed.end_col,
                ctx: &ctx,
                arch: self.arch,
            };
            let col = cur.col();
            let name = match cur.next() {
                Some((Tok::Ident(n), _)) => n,
                _ => return Err(ctx.syntax(col, "expected a syscall name")),
            };
            let nr = self
                .arch
                .syscall_nr(&name)
                .ok_or_else(|| ctx.err(col, ErrorKind::UnknownSyscall(name.clone())))?;
            if !cur.eat_op(":") {
                return Err(ctx.syntax(cur.col(), format!("expected ':' after '{name}'")));
            }
            let filter = cur.body()?;
            if let Some(&first) = self.seen.get(&nr) {
                let at = self.rules[first].location.to_string();
                return Err(ctx.err(col, ErrorKind::DuplicateSyscall(name, at)));
            }
            self.seen.insert(nr, self.rules.len());
            self.rules.push(Rule {
                name,
                nr,
                filter,
                location: Location {
                    file: file.to_path_buf(),
                    line: i + 1,
                },
            });
        }
        Ok(())
    }

    fn parse_frequency(&mut self, file: &Path, text: &str) -> Result<(), ParseError> {
        for (i, raw) in text.lines().enumerate() {
            let ctx = LineCtx { file, line: i + 1 };
            let line = strip_comment(raw);
            if line.trim().is_empty() {
                continue;
            }
            let lexed = lex(&ctx, line)?;
            let mut cur = Cursor {
                toks: &lexed.toks,
                pos: 0,
                end_col: lexed.end_col,
                ctx: &ctx,
                arch: self.arch,
            };
            let col = cur.col();
            let name = match cur.next() {
                Some((Tok::Ident(n), _)) => n,
                _ => return Err(ctx.syntax(col, "expected 'syscall: count'")),
            };
            let nr = self
                .arch
                .syscall_nr(&name)
                .ok_or_else(|| ctx.err(col, ErrorKind::UnknownSyscall(name.clone())))?;
            if !cur.eat_op(":") {
                return Err(ctx.syntax(cur.col(), format!("expected ':' after '{name}'")));
            }
            let col = cur.col();
            let count = match cur.next() {
                Some((Tok::Num(n), _)) => n,
                _ => return Err(ctx.syntax(col, "expected a count")),
            };
            cur.expect_end()?;
            let e = self.frequency.entry(nr).or_insert(0);
            *e = e.saturating_add(count);
        }
        Ok(())
    }
}

/// Parses a value as written in policies (`0x10`, `PROT_READ|PROT_WRITE`, `~PROT_EXEC`).
pub fn parse_value(text: &str, arch: Arch) -> Result<u64, String> {
    let file = Path::new("<value>");
    let ctx = LineCtx { file, line: 1 };
    let lexed = lex(&ctx, text).map_err(|e| e.to_string())?;
    let mut cur = Cursor {
        toks: &lexed.toks,
        pos: 0,
        end_col: lexed.end_col,
        ctx: &ctx,
        arch,
    };
    let v = cur.value().map_err(|e| e.to_string())?;
    cur.expect_end().map_err(|e| e.to_string())?;
    Ok(v)
}
