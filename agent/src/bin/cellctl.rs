//! `cellctl`: a small controller for people, talking NATS only.

fn main() {
    eprintln!("cellctl: not written yet");
    std::process::exit(1);
}
