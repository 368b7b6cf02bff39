//! What one run of the pod programs costs, in ns, measured in the kernel with `BPF_PROG_TEST_RUN` (no netns, no
//! scheduler noise): `sudo cargo run --release -p trellis-ebpf --example prog_cost`. The packet is pod-to-pod
//! TCP (no Service): the path every packet that is not Service traffic takes, and the one socket-LB traffic takes.
use trellis_ebpf::{programs, tcp4_frame, Datapath, PinDir};

/// Removes the pins when dropped, also when a panic unwinds (println! panics on a closed pipe, e.g. `| head`).
struct Pins(PinDir);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

fn main() -> anyhow::Result<()> {
    let pins = Pins(PinDir::at(format!("/sys/fs/bpf/trellis-prog-cost-{}", std::process::id())));
    let dp = Datapath::load(pins.0.clone());
    let result = (|| -> anyhow::Result<()> {
        let dp = dp?;
        let repeat = 2_000_000;
        for (what, flags) in [("ACK", 0x10u8), ("SYN", 0x02)] {
            for prog in [programs::FROM_POD, programs::TO_POD] {
                // Best of 5: the kernel's own loop, but the VM still steals time now and then.
                let mut best = u32::MAX;
                let mut verdict = 0;
                for _ in 0..5 {
                    let (v, ns) =
                        dp.test_run(prog, &tcp4_frame([10, 0, 1, 2], 40000, [10, 0, 2, 3], 8080, flags), repeat)?;
                    best = best.min(ns);
                    verdict = v;
                }
                println!("{prog:>9} {what}: {best} ns per run (verdict {verdict})");
            }
        }
        Ok(())
    })();
    drop(pins);
    result
}
