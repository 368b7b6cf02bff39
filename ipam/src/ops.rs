//! IPAM operations over any [`Store`]: allocate, release, gc, status, check. Each takes the store
//! lock for its whole duration, so concurrent plugin processes see each other's work.

use crate::alloc;
use crate::config::IpamConfig;
use crate::error::{IpamError, Result};
use crate::store::{matching, with_lock, Store};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;
use trellis_cni_types::env::{is_valid_ifname, IFNAME_RULE};

/// One address handed out: the IP with its subnet's prefix, the range's gateway, and the index
/// of the range set it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub rangeset: usize,
}

/// The container ID and interface name become file content: refuse what would corrupt it.
pub fn validate_args(container_id: &str, ifname: &str) -> Result<()> {
    let id = container_id.trim();
    if id.is_empty() {
        return Err(IpamError::BadArgs { name: "CNI_CONTAINERID", reason: "is empty".into() });
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IpamError::BadArgs {
            name: "CNI_CONTAINERID",
            reason: format!("{id:?} contains whitespace or control characters"),
        });
    }
    if !is_valid_ifname(ifname) {
        return Err(IpamError::BadArgs {
            name: "CNI_IFNAME",
            reason: format!("{ifname:?} is not a valid interface name ({IFNAME_RULE})"),
        });
    }
    Ok(())
}

fn allocation_of(cfg: &IpamConfig, rangeset: usize, ip: IpAddr) -> Option<Allocation> {
    let range = cfg.range_sets[rangeset].range_for(ip)?;
    let address = IpNet::new(ip, range.subnet.prefix_len()).ok()?;
    Some(Allocation { address, gateway: Some(range.gateway), rangeset })
}

/// One address per range set for `container_id`/`ifname`. Idempotent: an existing allocation is
/// returned as is. All-or-nothing: if any range set fails, addresses reserved here are released.
pub fn allocate<S: Store + ?Sized>(
    store: &mut S,
    cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>> {
    allocate_requested(store, cfg, container_id, ifname, &[])
}

/// [`allocate`], with specific addresses requested (host-local's `CNI_ARGS IP=`, `args.cni.ips`,
/// `runtimeConfig.ips`): at most one per range set; range sets without one allocate as usual.
pub fn allocate_requested<S: Store + ?Sized>(
    store: &mut S,
    cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<Allocation>> {
    validate_args(container_id, ifname)?;
    let wanted = assign_requested(cfg, requested)?;
    with_lock(store, |s| {
        let mut fresh = Vec::new();
        let out = allocate_locked(s, cfg, container_id, ifname, &wanted, &mut fresh);
        if out.is_err() {
            for ip in fresh {
                // Best effort: a failed release still carries this ID, so the runtime's DEL frees it.
                let _ = s.release(ip);
            }
        }
        out
    })
}

fn allocate_locked<S: Store + ?Sized>(
    s: &mut S,
    cfg: &IpamConfig,
    id: &str,
    ifname: &str,
    wanted: &[Option<IpAddr>],
    fresh: &mut Vec<IpAddr>,
) -> Result<Vec<Allocation>> {
    // One directory read gives both the used set and this attachment's existing leases.
    let leases = s.list()?;
    let mine = matching(&leases, id, ifname);
    let mut used: HashSet<IpAddr> = leases.iter().map(|l| l.ip).collect();
    let mut out = Vec::with_capacity(cfg.range_sets.len());
    for (idx, set) in cfg.range_sets.iter().enumerate() {
        let existing = mine.iter().find_map(|ip| allocation_of(cfg, idx, *ip));
        if let Some(want) = wanted[idx] {
            let unavailable = |reason: String| IpamError::Unavailable { ip: want, reason };
            match existing {
                Some(a) if a.address.addr() == want => out.push(a),
                Some(a) => {
                    return Err(unavailable(format!(
                        "{id}/{ifname} already holds {} in range set {idx}",
                        a.address.addr()
                    )))
                }
                None if used.contains(&want) || !s.reserve(id, ifname, want, idx)? => {
                    return Err(unavailable("it is allocated to another container".into()))
                }
                None => {
                    fresh.push(want);
                    used.insert(want);
                    out.push(allocation_of(cfg, idx, want).ok_or_else(|| unavailable("not in its range set".into()))?);
                }
            }
            continue;
        }
        if let Some(a) = existing {
            out.push(a);
            continue;
        }
        let last = s.last_reserved(idx)?;
        let mut got = None;
        for (ip, _) in alloc::candidates(set, last) {
            if used.contains(&ip) {
                continue;
            }
            used.insert(ip);
            // Ok(false): a file we did not list (written by a lock-ignoring tool); try the next.
            if s.reserve(id, ifname, ip, idx)? {
                fresh.push(ip);
                got = Some(ip);
                break;
            }
        }
        let ip = got.ok_or_else(|| IpamError::Exhausted { rangeset: idx, ranges: set.to_string() })?;
        let a = allocation_of(cfg, idx, ip)
            .ok_or_else(|| IpamError::Store(format!("internal: {ip} is not in range set {idx}")))?;
        out.push(a);
    }
    Ok(out)
}

/// Which range set each requested address goes to (pure). Every address must lie in a range,
/// not be a reserved address, and share its range set with no other requested address.
pub fn assign_requested(cfg: &IpamConfig, requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
    let mut wanted = vec![None; cfg.range_sets.len()];
    for &ip in requested {
        let bad =
            |reason: String| IpamError::BadArgs { name: "IP", reason: format!("requested address {ip} {reason}") };
        let (idx, range) = cfg
            .range_sets
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.range_for(ip).map(|r| (i, r)))
            .ok_or_else(|| bad("is in none of the configured ranges".into()))?;
        if range.is_reserved(ip) {
            return Err(bad(format!("is reserved in {} (gateway, network or broadcast)", range.subnet)));
        }
        if let Some(other) = wanted[idx].replace(ip) {
            return Err(bad(format!("and {other} are in the same range set {idx}; request one per range set")));
        }
    }
    Ok(wanted)
}

/// Release every address of `container_id`/`ifname` in this network's store; nothing held is Ok.
/// `cfg` is unused today: like host-local, release is by owner, whatever the current ranges are.
pub fn release<S: Store + ?Sized>(
    store: &mut S,
    _cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>> {
    if container_id.trim().is_empty() {
        return Err(IpamError::BadArgs { name: "CNI_CONTAINERID", reason: "is empty".into() });
    }
    with_lock(store, |s| s.release_by_id(container_id, ifname))
}

/// Release every lease whose owner is not in `valid` (container ID, ifname), including leases
/// whose owner is unknown (a reservation cut short by a crash). Returns what was released.
pub fn gc<S: Store + ?Sized>(store: &mut S, _cfg: &IpamConfig, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
    with_lock(store, |s| {
        let mut released = Vec::new();
        let mut first_err = None;
        for lease in s.list()? {
            if valid.iter().any(|(id, ifname)| lease.belongs_to(id, ifname)) {
                continue;
            }
            match s.release(lease.ip) {
                Ok(()) => released.push(lease.ip),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                released.sort();
                Ok(released)
            }
        }
    })
}

/// Ready to allocate: the store is writable and no range set is exhausted.
pub fn status<S: Store + ?Sized>(store: &mut S, cfg: &IpamConfig) -> Result<()> {
    with_lock(store, |s| {
        s.check_writable()?;
        let used: HashSet<IpAddr> = s.list()?.into_iter().map(|l| l.ip).collect();
        for (idx, set) in cfg.range_sets.iter().enumerate() {
            if alloc::free_count(set, &used) == 0 {
                return Err(IpamError::Exhausted { rangeset: idx, ranges: set.to_string() });
            }
        }
        Ok(())
    })
}

/// Ok if `container_id`/`ifname` holds at least one address and every address in `expected`.
pub fn check<S: Store + ?Sized>(store: &mut S, container_id: &str, ifname: &str, expected: &[IpAddr]) -> Result<()> {
    let held = with_lock(store, |s| s.get_by_id(container_id, ifname))?;
    if held.is_empty() {
        return Err(IpamError::CheckFailed(format!("no address is allocated to {container_id}/{ifname}")));
    }
    let missing: Vec<String> = expected.iter().filter(|ip| !held.contains(ip)).map(|ip| ip.to_string()).collect();
    if !missing.is_empty() {
        return Err(IpamError::CheckFailed(format!(
            "{} not allocated to {container_id}/{ifname} (it holds {held:?})",
            missing.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
