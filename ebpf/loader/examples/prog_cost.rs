//! What one run of the pod programs costs, in ns, measured in the kernel with `BPF_PROG_TEST_RUN` (no netns, no
//! scheduler noise): `sudo cargo run --release -p trellis-ebpf --example prog_cost`. The packet is pod-to-pod
//! TCP (no Service): the path every packet that is not Service traffic takes, and the one socket-LB traffic takes.
use trellis_ebpf::{programs, Datapath, PinDir};

/// Ethernet + IPv4 (no options) + TCP (20 bytes) + 1 byte: 10.0.1.2:40000 -> 10.0.2.3:8080, with `flags`.
fn packet(flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20 + 1];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&41u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 1, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 3]);
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&8080u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    p
}

fn main() -> anyhow::Result<()> {
    let pins = PinDir::at(format!("/sys/fs/bpf/trellis-prog-cost-{}", std::process::id()));
    let dp = Datapath::load(pins.clone());
    let result = (|| -> anyhow::Result<()> {
        let dp = dp?;
        let repeat = 2_000_000;
        for (what, flags) in [("ACK", 0x10u8), ("SYN", 0x02)] {
            for prog in [programs::FROM_POD, programs::TO_POD] {
                // Best of 5: the kernel's own loop, but the VM still steals time now and then.
                let mut best = u32::MAX;
                let mut verdict = 0;
                for _ in 0..5 {
                    let (v, ns) = dp.test_run(prog, &packet(flags), repeat)?;
                    best = best.min(ns);
                    verdict = v;
                }
                println!("{prog:>9} {what}: {best} ns per run (verdict {verdict})");
            }
        }
        Ok(())
    })();
    let _ = pins.remove();
    result
}
