mod ebpf;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("build-ebpf") {
        if let Err(e) = ebpf::build_ebpf() {
            eprintln!("xtask build-ebpf: {e}");
            std::process::exit(1);
        }
    }
}
