//! Programming the eBPF maps as the agent does: the Services into `trellis_svc::translate`, the result diffed
//! against what is installed, only the difference written, one entry per syscall (`KernelLbTables` put/delete;
//! no batch updates yet).
use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_agent::model::SvcChange;
use trellis_agent::services::{restore_ids, Programmer, ServiceState};
use trellis_ebpf::tables::KernelLbTables;
use trellis_svc::{Endpoint, Ids, NodeContext, Proto, ServiceModel};

use crate::gen::{Spec, SERVICE_PORT};

fn node() -> NodeContext {
    NodeContext { name: "bench-a".into(), node_port_addresses: vec![] }
}

fn service(i: usize) -> ServiceModel {
    ServiceModel::cluster_ip("bench", &Spec::name(i), Spec::vip(i).into(), SERVICE_PORT)
}

fn endpoints(spec: &Spec, i: usize) -> Vec<Endpoint> {
    spec.endpoints(i)
        .iter()
        .map(|a| Endpoint {
            address: (*a).into(),
            node: Some("bench-b".into()),
            ready: true,
            serving: true,
            terminating: false,
            ports: [((String::new(), Proto::Tcp), spec.port(i))].into(),
        })
        .collect()
}

/// The changes the control plane would send for Service `i` and its one slice.
fn add(spec: &Spec, i: usize) -> [SvcChange; 2] {
    let s = service(i);
    let id = s.id();
    [SvcChange::Service(id.clone(), Some(s)), SvcChange::Slice(format!("{id}-1"), Some((id, endpoints(spec, i))))]
}

fn remove(i: usize) -> [SvcChange; 2] {
    let id = format!("bench/{}", Spec::name(i));
    [SvcChange::Service(id.clone(), None), SvcChange::Slice(format!("{id}-1"), None)]
}

/// Service `i`'s slice with the readiness of its first endpoint flipped `times` times.
fn flipped(spec: &Spec, i: usize, times: usize) -> SvcChange {
    let id = format!("bench/{}", Spec::name(i));
    let mut eps = endpoints(spec, i);
    if times % 2 == 1 {
        eps[0].ready = false;
        eps[0].serving = false;
    }
    SvcChange::Slice(format!("{id}-1"), Some((id, eps)))
}

/// The agent's state after `changes`, and the Services they touched queued in `p`.
fn apply(state: &mut ServiceState, p: &mut Programmer, changes: impl IntoIterator<Item = SvcChange>) {
    for c in changes {
        p.pending.extend(state.apply(c));
    }
}

/// One change as the agent applies it: translation of the Service it touched and the writes, with the number of
/// entries written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub took: Duration,
    pub writes: usize,
}

/// Programming times at one N, each through the agent's own path ([`Programmer`]: incremental translation, only
/// changed keys compared, batch writes).
#[derive(Clone, Debug, Default)]
pub struct Times {
    /// Empty to N: every Service translated, then written into the empty maps.
    pub fill_translate: Duration,
    pub fill_write: Duration,
    /// CPU time of the fill (this thread, user + system): what it costs without the noise of a shared machine.
    pub fill_cpu: Duration,
    pub fill_entries: usize,
    /// N to N after a restart: ids restored from the maps, every Service translated, every entry compared (nothing
    /// to write).
    pub resync: Duration,
    pub add: Step,
    pub delete: Step,
    /// One endpoint's readiness flipped, over `FLIPS` flips: p50 and p99 of the whole change.
    pub flip: Step,
    pub flip_p50: Duration,
    pub flip_p99: Duration,
}

pub const FLIPS: usize = 200;

/// Programs `spec` into empty maps and times every step; leaves exactly `spec` installed.
pub fn program(t: &mut KernelLbTables, spec: &Spec) -> Result<Times> {
    let mut times = Times::default();
    let mut state = ServiceState::default();
    let mut p = Programmer::new(node(), Ids::default());
    apply(&mut state, &mut p, (0..spec.n).flat_map(|i| add(spec, i)));

    // Empty to N. Translation first (what `sync` does before writing), timed apart from the writes.
    let c0 = thread_cpu();
    let t0 = Instant::now();
    p.translator.track(false); // as `sync` does on a first (full) round
    p.translator.reserve(p.pending.len());
    for id in std::mem::take(&mut p.pending) {
        state.feed(&mut p.translator, &id);
    }
    times.fill_translate = t0.elapsed();
    let t0 = Instant::now();
    let st = p.sync(&state, t)?;
    times.fill_write = t0.elapsed();
    times.fill_cpu = thread_cpu().saturating_sub(c0);
    times.fill_entries = st.puts;

    // A restarted agent: ids from the maps, everything translated and compared, nothing written.
    let t0 = Instant::now();
    let ids = restore_ids(&t.be4, &t.be6, &t.svc4, &t.svc6)?;
    let mut again = Programmer::new(node(), ids);
    again.pending.extend(state.services.keys().cloned());
    let st = again.sync(&state, t)?;
    times.resync = t0.elapsed();
    anyhow::ensure!(st.puts + st.deletes == 0, "resync wrote {st:?}");
    let mut p = again;

    let mut step = |p: &mut Programmer, state: &mut ServiceState, changes: Vec<SvcChange>| -> Result<Step> {
        let t0 = Instant::now();
        apply(state, p, changes);
        let st = p.sync(state, t)?;
        Ok(Step { took: t0.elapsed(), writes: st.puts + st.deletes })
    };
    let extra = Spec { n: spec.n + 1, live: spec.live.clone() };
    times.add = step(&mut p, &mut state, add(&extra, spec.n).into())?;
    times.delete = step(&mut p, &mut state, remove(spec.n).into())?;
    // Flip an endpoint of a Service nobody probes (0, unless it is probed); an even number: ends as it began.
    let victim = (0..spec.n).find(|i| !spec.live.contains(i)).unwrap_or(0);
    let mut took = Vec::new();
    for k in 1..=FLIPS {
        let s = step(&mut p, &mut state, vec![flipped(spec, victim, k)])?;
        if k == 1 {
            times.flip = s;
        }
        took.push(s.took);
    }
    took.sort();
    times.flip_p50 = crate::stats::percentile(&took, 50.0);
    times.flip_p99 = crate::stats::percentile(&took, 99.0);
    Ok(times)
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `ts` only.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Memory the kernel charges for the maps pinned in `dir` (bytes_memlock, as `bpftool map show` reports it).
pub fn memlock(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if e.file_type().ok()?.is_dir() {
            continue;
        }
        let out = std::process::Command::new("bpftool").args(["map", "show", "pinned"]).arg(e.path()).output().ok()?;
        let s = String::from_utf8_lossy(&out.stdout);
        total += s.split_whitespace().skip_while(|w| *w != "memlock").nth(1).and_then(parse_bytes).unwrap_or(0);
    }
    Some(total)
}

/// bpftool prints `memlock 1234B` (or a bare number).
fn parse_bytes(s: &str) -> Option<u64> {
    s.trim_end_matches('B').parse().ok()
}

/// This process' resident set, in bytes.
pub fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_frontend_slots_per_service_and_a_flip_changes_its_own() {
        let spec = Spec { n: 3, live: vec![2] };
        let mut state = ServiceState::default();
        let mut p = Programmer::new(node(), Ids::default());
        apply(&mut state, &mut p, (0..spec.n).flat_map(|i| add(&spec, i)));
        for id in std::mem::take(&mut p.pending) {
            let eps = state.endpoints_of(&id);
            p.translator.update(&id, state.services.get(&id), &eps);
        }
        let d = p.translator.desired();
        assert_eq!((d.v4.services.len(), d.v4.rev_nat.len(), d.v4.backends.len()), (9, 3, 6));
        p.translator.take_dirty();
        apply(&mut state, &mut p, [flipped(&spec, 0, 1)]);
        assert_eq!(p.pending.len(), 1);
        for id in std::mem::take(&mut p.pending) {
            let eps = state.endpoints_of(&id);
            p.translator.update(&id, state.services.get(&id), &eps);
        }
        assert_eq!(p.translator.desired().v4.services.len(), 8, "one endpoint unready: one slot fewer");
        // Slot 0's count, slot 1 (now the other backend), slot 2 (gone), and the backend that went.
        let dirty = p.translator.take_dirty();
        assert_eq!((dirty.v4.services.len(), dirty.v4.backends.len()), (3, 2));
        assert_eq!(parse_bytes("4096B"), Some(4096));
        apply(&mut state, &mut p, remove(1));
        assert_eq!(state.services.len(), 2);
    }
}
