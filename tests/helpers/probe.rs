//! A static probe streamed into containers by the escape tests: it tries one system call that
//! busybox has no applet for and prints `ok` or `errno N`. Built at test time by
//! `e2e::security::probe_binary` with rustc alone (std only, statically linked), so it runs in
//! any image.
//!
//! Usage: `probe <keyctl|add_key|request_key|bpf|perf_event_open|userfaultfd|unshare_user|
//! init_module|kexec_load|ptrace_init|settime|euid|read FILE>`.

use std::io::Read;

extern "C" {
    fn syscall(nr: i64, ...) -> i64;
    fn geteuid() -> u32;
    fn __errno_location() -> *mut i32;
}

const SYS_PTRACE: i64 = 101;
const SYS_SETTIMEOFDAY: i64 = 164;
const SYS_INIT_MODULE: i64 = 175;
const SYS_KEXEC_LOAD: i64 = 246;
const SYS_ADD_KEY: i64 = 248;
const SYS_REQUEST_KEY: i64 = 249;
const SYS_KEYCTL: i64 = 250;
const SYS_UNSHARE: i64 = 272;
const SYS_PERF_EVENT_OPEN: i64 = 298;
const SYS_BPF: i64 = 321;
const SYS_USERFAULTFD: i64 = 323;

fn report(rc: i64) -> ! {
    if rc >= 0 {
        println!("ok");
        std::process::exit(0);
    }
    // SAFETY: errno of this thread, right after the call.
    let errno = unsafe { *__errno_location() };
    println!("errno {errno}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("");
    let user = b"user\0";
    let desc = b"probe\0";
    let payload = b"secret";
    let mut attr = [0u8; 128];
    // SAFETY: each call gets valid pointers or plain integers; failures come back as -1.
    let rc = unsafe {
        match what {
            // KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING, creating it.
            "keyctl" => syscall(SYS_KEYCTL, 0i64, -4i64, 1i64),
            // A key in the process keyring.
            "add_key" => syscall(
                SYS_ADD_KEY,
                user.as_ptr(),
                desc.as_ptr(),
                payload.as_ptr(),
                payload.len(),
                -2i64,
            ),
            "request_key" => syscall(SYS_REQUEST_KEY, user.as_ptr(), desc.as_ptr(), 0i64, 0i64),
            // BPF_PROG_LOAD of an empty program: EINVAL when allowed, EPERM when refused.
            "bpf" => {
                let len = attr.len();
                syscall(SYS_BPF, 5i64, attr.as_mut_ptr(), len)
            }
            "perf_event_open" => {
                attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
                syscall(SYS_PERF_EVENT_OPEN, attr.as_ptr(), 0i64, -1i64, -1i64, 0i64)
            }
            "userfaultfd" => syscall(SYS_USERFAULTFD, 0i64),
            "unshare_user" => syscall(SYS_UNSHARE, 0x1000_0000i64),
            "init_module" => syscall(SYS_INIT_MODULE, attr.as_ptr(), 0i64, desc.as_ptr()),
            "kexec_load" => syscall(SYS_KEXEC_LOAD, 0i64, 0i64, 0i64, 0i64),
            // PTRACE_ATTACH to pid 1 (garden-init).
            "ptrace_init" => syscall(SYS_PTRACE, 16i64, 1i64, 0i64, 0i64),
            "settime" => {
                let tv = [0i64; 2];
                syscall(SYS_SETTIMEOFDAY, tv.as_ptr(), 0i64)
            }
            "euid" => {
                println!("{}", geteuid());
                std::process::exit(0)
            }
            "read" => {
                let mut s = String::new();
                let path = args.get(2).map(String::as_str).unwrap_or("");
                match std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s)) {
                    Ok(_) => {
                        print!("{s}");
                        std::process::exit(0)
                    }
                    Err(e) => {
                        println!("error {e}");
                        std::process::exit(1)
                    }
                }
            }
            _ => {
                eprintln!("unknown probe {what:?}");
                std::process::exit(2)
            }
        }
    };
    report(rc)
}
