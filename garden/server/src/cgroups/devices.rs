//! The devices a container may use (Guardian's allowlist), enforced on both hierarchies: v1
//! writes the rules to `devices.allow`; v2 has no devices file, so the rules are compiled into
//! a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the container's cgroup, as runc and
//! youki do. The program is checked for every open and mknod of a device node by a task in the
//! cgroup; it stays attached until the cgroup is removed.
//!
//! Any node may be made (`m`), which is what lets root keep CAP_MKNOD as in Guardian: a disk or
//! /dev/mem node made inside cannot be opened.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Char,
    Block,
}

/// Access bits, as the kernel numbers them for device programs.
pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

/// One allowed (kind, major, minor, access) pattern; `None` = any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

const fn dev(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u32) -> Rule {
    Rule {
        kind,
        major,
        minor,
        access,
    }
}

/// null, zero, full, random, urandom, tty, ptmx, the pty slaves and fuse; mknod of anything.
pub const ALLOWLIST: &[Rule] = &[
    dev(Kind::Char, None, None, MKNOD),
    dev(Kind::Block, None, None, MKNOD),
    dev(Kind::Char, Some(1), Some(3), RWM),
    dev(Kind::Char, Some(1), Some(5), RWM),
    dev(Kind::Char, Some(1), Some(7), RWM),
    dev(Kind::Char, Some(1), Some(8), RWM),
    dev(Kind::Char, Some(1), Some(9), RWM),
    dev(Kind::Char, Some(5), Some(0), RWM),
    dev(Kind::Char, Some(5), Some(2), RWM),
    dev(Kind::Char, Some(136), None, RWM),
    dev(Kind::Char, Some(10), Some(229), RWM),
];

impl Rule {
    /// The rule as a line of v1's `devices.allow` (`c 1:3 rwm`).
    pub fn v1_line(&self) -> String {
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        let kind = match self.kind {
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        format!(
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }

    fn allows(&self, kind: Kind, major: u32, minor: u32, access: u32) -> bool {
        self.kind == kind
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access & !self.access == 0
    }
}

/// Whether `rules` let a task use (kind, major, minor) for `access`: what the compiled
/// program decides, stated plainly (the tests hold the two to each other).
pub fn allowed(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u32) -> bool {
    rules.iter().any(|r| r.allows(kind, major, minor, access))
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// BPF_DEVCG_DEV_BLOCK / BPF_DEVCG_DEV_CHAR.
fn kind_number(kind: Kind) -> i32 {
    match kind {
        Kind::Block => 1,
        Kind::Char => 2,
    }
}

/// Compile `rules` into a program over `struct bpf_cgroup_dev_ctx { u32 access_type; u32
/// major; u32 minor; }` (access_type = access << 16 | kind) that returns 1 (allow) when a rule
/// matches and 0 otherwise. Registers: r2 kind, r3 access, r4 major, r5 minor, r6 scratch.
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check jumps past the rest of this rule's block when it fails.
        let mut block: Vec<Insn> = Vec::new();
        let mut skips: Vec<usize> = Vec::new();
        block.push(insn(JMP_JNE_K, 2, 0, 0, kind_number(r.kind)));
        skips.push(block.len() - 1);
        if r.access & RWM != RWM {
            // The requested access must be a subset of the rule's: (access & rule) == access.
            block.push(insn(ALU64_MOV_X, 6, 3, 0, 0));
            block.push(insn(ALU64_AND_K, 6, 0, 0, r.access as i32));
            block.push(insn(JMP_JNE_X, 6, 3, 0, 0));
            skips.push(block.len() - 1);
        }
        for (reg, number) in [(4, r.major), (5, r.minor)] {
            if let Some(n) = number {
                block.push(insn(JMP_JNE_K, reg, 0, 0, n as i32));
                skips.push(block.len() - 1);
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for at in skips {
            // Jump offsets count from the next instruction.
            block[at].off = (len - at - 1) as i16;
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs may sit on one cgroup and its ancestors; all must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel wants the rest zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _rest: [u64; 8],
}

/// The head of `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    _rest: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised repr(C) bpf_attr head of the size passed;
    // the kernel reads (and for PROG_LOAD, writes the log into) only what it describes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Load the program for `rules`; the descriptor keeps it alive until attached.
pub fn load(rules: &[Rule]) -> std::io::Result<OwnedFd> {
    let program = compile(rules);
    // Quietly first: a verbose verifier log that does not fit fails the load (ENOSPC).
    let fd = match load_with_log(&program, &mut []) {
        Ok(fd) => fd,
        Err(e) => {
            let mut log = vec![0u8; 1 << 20];
            let again = load_with_log(&program, &mut log);
            let text = String::from_utf8_lossy(&log);
            let last = text.trim_end_matches('\0').lines().last().unwrap_or("");
            match again {
                Ok(fd) => fd,
                Err(_) if !last.is_empty() => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{e}; verifier: {last}"),
                    ))
                }
                Err(_) => return Err(e),
            }
        }
    };
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load_with_log(program: &[Insn], log: &mut [u8]) -> std::io::Result<libc::c_long> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"garden_device");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// Attach the allowlist's program to the cgroup directory `dir`.
pub fn attach(dir: &Path) -> std::io::Result<()> {
    let prog = load(ALLOWLIST)?;
    let cgroup = std::fs::File::open(dir)?;
    let mut attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)?;
    Ok(())
}

/// Whether this kernel takes device programs (CONFIG_CGROUP_BPF), probed once.
pub fn bpf_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| match load(ALLOWLIST) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot load a cgroup device program: containers lose CAP_MKNOD instead");
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a compiled program the way the kernel would, for the instructions `compile` emits.
    fn run(program: &[Insn], kind: Kind, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [(access << 16) | kind_number(kind) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let k = i.imm as i64 as u64;
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads are from the context");
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                ALU64_AND_K => r[dst] &= k,
                ALU64_RSH_K => r[dst] >>= k,
                ALU64_MOV_K => r[dst] = k,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != k => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_decides_as_the_rules_do() {
        let program = compile(ALLOWLIST);
        let mut allowed_count = 0;
        for kind in [Kind::Char, Kind::Block] {
            for major in [0, 1, 4, 5, 7, 8, 10, 136, 254] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 229, 4242] {
                    for access in 1..=RWM {
                        let want = allowed(ALLOWLIST, kind, major, minor, access);
                        allowed_count += want as u32;
                        assert_eq!(
                            run(&program, kind, major, minor, access),
                            want as u64,
                            "{kind:?} {major}:{minor} access {access}"
                        );
                    }
                }
            }
        }
        assert!(allowed_count > 0);
    }

    #[test]
    fn allowlist_is_guardians() {
        let c = |major, minor, access| allowed(ALLOWLIST, Kind::Char, major, minor, access);
        assert!(c(1, 3, READ | WRITE), "/dev/null");
        assert!(c(136, 7, READ | WRITE), "a pty");
        assert!(c(1, 1, MKNOD), "any node may be made");
        assert!(!c(1, 1, READ), "/dev/mem may not be read");
        assert!(!allowed(ALLOWLIST, Kind::Block, 8, 0, READ), "nor a disk");
        assert!(!c(1, 1, READ | MKNOD), "mixed access needs all of it");
        let lines: Vec<String> = ALLOWLIST.iter().map(Rule::v1_line).collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[9], "c 136:* rwm");
    }

    /// The real kernel runs the program: on this host a cgroup v2 directory (the unified
    /// mount of a hybrid host, or the v2 root) with the program attached lets a child open
    /// /dev/null but not /dev/mem, even as root.
    #[test]
    fn the_kernel_enforces_the_program() {
        test_support::require_root!();
        let Some(root) = unified_mount() else {
            eprintln!("no cgroup2 mount: skipped");
            return;
        };
        let dir = root.join(format!("garden-devices-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let procs = dir.join("cgroup.procs");
        // A shell that joins the cgroup, then opens `dev` for reading as root.
        let probe = |dev: &str| {
            test_support::sh(&format!("echo $$ > {} && exec 3< {dev}", procs.display()))
        };
        let result = std::panic::catch_unwind(|| {
            assert!(
                probe("/dev/kmsg"),
                "control: /dev/kmsg is readable without the program"
            );
            attach(&dir).expect("attach");
            assert!(probe("/dev/zero"), "/dev/zero is allowed");
            assert!(!probe("/dev/kmsg"), "/dev/kmsg (c 1:11) is refused");
        });
        // The shells have exited; the cgroup is empty.
        std::fs::remove_dir(&dir).unwrap();
        result.unwrap();
    }

    fn unified_mount() -> Option<std::path::PathBuf> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mi.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(Into::into))
                .flatten()
        })
    }
}
