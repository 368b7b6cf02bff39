//! Programming the eBPF maps as the agent does: the Services into `trellis_svc::translate`, the result diffed
//! against what is installed, only the difference written, one entry per syscall (`KernelLbTables` put/delete;
//! no batch updates yet).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use trellis_ebpf::common::{Lb4Backend, Lb4Key, LbService, RevNat4, V4};
use trellis_ebpf::tables::{KernelLbTables, MapTable};
use trellis_svc::{translate, Desired, Endpoint, FamilyMaps, Ids, NodeContext, Proto, ServiceModel};

use crate::gen::{Spec, SERVICE_PORT};

/// The control plane's view of `spec`.
pub struct Model {
    pub services: Vec<ServiceModel>,
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
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

impl Model {
    pub fn new(spec: &Spec) -> Model {
        let mut m = Model { services: Vec::with_capacity(spec.n), endpoints: BTreeMap::new() };
        for i in 0..spec.n {
            m.add(spec, i);
        }
        m
    }
    pub fn add(&mut self, spec: &Spec, i: usize) {
        let s = service(i);
        self.endpoints.insert(s.id(), endpoints(spec, i));
        self.services.push(s);
    }
    pub fn remove_last(&mut self) {
        if let Some(s) = self.services.pop() {
            self.endpoints.remove(&s.id());
        }
    }
    /// Flips the readiness of Service `i`'s first endpoint.
    pub fn flip(&mut self, i: usize) {
        if let Some(e) = self.endpoints.get_mut(&format!("bench/{}", Spec::name(i))).and_then(|v| v.first_mut()) {
            e.ready = !e.ready;
            e.serving = e.ready;
        }
    }
    pub fn translate(&self, ids: &mut Ids) -> Desired {
        let node = NodeContext { name: "bench-a".into(), node_port_addresses: vec![] };
        translate(&self.services, &self.endpoints, &node, ids)
    }
}

/// What the IPv4 maps hold.
pub fn installed(t: &KernelLbTables) -> Result<FamilyMaps<V4>> {
    Ok(FamilyMaps {
        services: t.svc4.entries()?.into_iter().collect(),
        backends: t.be4.entries()?.into_iter().collect(),
        rev_nat: t.rnat4.entries()?.into_iter().collect(),
    })
}

/// What to write to turn `have` into `want`.
#[derive(Default)]
pub struct Ops {
    put_be: Vec<(u32, Lb4Backend)>,
    put_rnat: Vec<(u32, RevNat4)>,
    put_svc: Vec<(Lb4Key, LbService)>,
    del_svc: Vec<Lb4Key>,
    del_be: Vec<u32>,
    del_rnat: Vec<u32>,
}

impl Ops {
    pub fn len(&self) -> usize {
        self.put_be.len()
            + self.put_rnat.len()
            + self.put_svc.len()
            + self.del_svc.len()
            + self.del_be.len()
            + self.del_rnat.len()
    }
}

fn changed<K: Ord + Copy, V: PartialEq + Copy>(have: &BTreeMap<K, V>, want: &BTreeMap<K, V>) -> (Vec<(K, V)>, Vec<K>) {
    let put = want.iter().filter(|(k, v)| have.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
    let del = have.keys().filter(|k| !want.contains_key(k)).copied().collect();
    (put, del)
}

/// The difference between two states of the IPv4 maps.
pub fn diff(have: &FamilyMaps<V4>, want: &FamilyMaps<V4>) -> Ops {
    let (put_be, del_be) = changed(&have.backends, &want.backends);
    let (put_rnat, del_rnat) = changed(&have.rev_nat, &want.rev_nat);
    let (put_svc, del_svc) = changed(&have.services, &want.services);
    Ops { put_be, put_rnat, put_svc, del_svc, del_be, del_rnat }
}

/// Writes `ops`, one entry per syscall: new backends and reverse NAT before the frontends that name them, stale
/// frontends deleted before their backends.
pub fn write(t: &mut KernelLbTables, ops: &Ops) -> Result<()> {
    for (k, v) in &ops.put_be {
        t.be4.put(k, v)?;
    }
    for (k, v) in &ops.put_rnat {
        t.rnat4.put(k, v)?;
    }
    for (k, v) in &ops.put_svc {
        t.svc4.put(k, v)?;
    }
    for k in &ops.del_svc {
        t.svc4.delete(k)?;
    }
    for k in &ops.del_be {
        t.be4.delete(k)?;
    }
    for k in &ops.del_rnat {
        t.rnat4.delete(k)?;
    }
    Ok(())
}

/// One change: full translate, in-memory diff, the writes (and how many).
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub translate: Duration,
    pub diff: Duration,
    pub write: Duration,
    pub writes: usize,
}

/// Programming times at one N.
#[derive(Clone, Debug, Default)]
pub struct Times {
    /// Empty to N: translate, then reconcile against the (empty) kernel maps.
    pub fill_translate: Duration,
    pub fill_write: Duration,
    pub fill_entries: usize,
    /// N to N after a restart: translate, read every entry back, diff (nothing to write).
    pub resync: Duration,
    /// One Service added / deleted / one endpoint flipped: full translate, in-memory diff, the writes.
    pub add: Step,
    pub delete: Step,
    pub flip: Step,
    /// The writes of 20 flips: p50 and p99.
    pub flip_write_p50: Duration,
    pub flip_write_p99: Duration,
}

/// Programs `spec` into empty maps and times every step; leaves exactly `spec` installed.
pub fn program(t: &mut KernelLbTables, spec: &Spec) -> Result<Times> {
    let mut times = Times::default();
    let mut ids = Ids::default();
    let mut model = Model::new(spec);

    let t0 = Instant::now();
    let want = model.translate(&mut ids);
    times.fill_translate = t0.elapsed();
    let t0 = Instant::now();
    let ops = diff(&installed(t)?, &want.v4);
    times.fill_entries = ops.len();
    write(t, &ops)?;
    times.fill_write = t0.elapsed();

    // A restarted agent: fresh ids restored from nothing but the same order, translate and compare.
    let t0 = Instant::now();
    let again = model.translate(&mut Ids::default());
    let writes = diff(&installed(t)?, &again.v4).len();
    times.resync = t0.elapsed();
    anyhow::ensure!(writes == 0, "resync found {writes} differences");

    let mut cur = want;
    let mut step = |model: &Model, ids: &mut Ids, t: &mut KernelLbTables| -> Result<Step> {
        let t0 = Instant::now();
        let next = model.translate(ids);
        let translate = t0.elapsed();
        let t0 = Instant::now();
        let ops = diff(&cur.v4, &next.v4);
        let diff = t0.elapsed();
        let t0 = Instant::now();
        write(t, &ops)?;
        let write = t0.elapsed();
        cur = next;
        Ok(Step { translate, diff, write, writes: ops.len() })
    };
    let extra = Spec { n: spec.n + 1, live: spec.live.clone() };
    model.add(&extra, spec.n);
    times.add = step(&model, &mut ids, t)?;
    model.remove_last();
    times.delete = step(&model, &mut ids, t)?;
    // Flip an endpoint of a Service nobody probes (0, unless it is probed), 20 times (even: ends as it began).
    let victim = (0..spec.n).find(|i| !spec.live.contains(i)).unwrap_or(0);
    let mut writes = Vec::new();
    for k in 0..20 {
        model.flip(victim);
        let s = step(&model, &mut ids, t)?;
        if k == 0 {
            times.flip = s;
        }
        writes.push(s.write);
    }
    writes.sort();
    times.flip_write_p50 = crate::stats::percentile(&writes, 50.0);
    times.flip_write_p99 = crate::stats::percentile(&writes, 99.0);
    Ok(times)
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
    fn the_model_translates_to_three_frontend_slots_per_service() {
        let spec = Spec { n: 3, live: vec![2] };
        let mut m = Model::new(&spec);
        let d = m.translate(&mut Ids::default());
        assert_eq!(d.v4.services.len(), 9);
        assert_eq!(d.v4.rev_nat.len(), 3);
        // The two live endpoints are one backend each, shared by nobody else.
        assert_eq!(d.v4.backends.len(), 6);
        m.flip(0);
        let d2 = m.translate(&mut Ids::default());
        assert_eq!(d2.v4.services.len(), 8, "one endpoint unready: one slot fewer");
        assert_eq!(parse_bytes("4096B"), Some(4096));
        // The flip as a diff: slot 0's count changes, the last slot goes.
        m.flip(0);
        let mut ids = Ids::default();
        let d1 = m.translate(&mut ids);
        m.flip(0);
        let ops = diff(&d1.v4, &m.translate(&mut ids).v4);
        // Slot 0's count, slot 1 now the other backend, slot 2 gone; that backend's entry gone.
        assert_eq!((ops.put_svc.len(), ops.del_svc.len(), ops.del_be.len()), (2, 1, 1));
        assert_eq!(diff(&d1.v4, &d1.v4).len(), 0);
    }
}
