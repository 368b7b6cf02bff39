//! trellis-ipam CNI IPAM plugin (being written).
fn main() {
    eprintln!("trellis-ipam: not implemented yet");
    std::process::exit(1);
}
