//! state.json: the plan plus what `up` learned while building (pod IPs, pids). Written after every step so a
//! crashed `up` still leaves a usable record.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::names::{self, LabDirs};
use crate::plan::{LabPlan, PodPlan};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub plan: LabPlan,
    pub bin_dir: PathBuf,
    pub repair_interval_secs: Option<u64>,
    /// Node name -> agent pid.
    pub agents: BTreeMap<String, i32>,
    /// "namespace/pod" -> IP from the CNI result.
    pub pod_ips: BTreeMap<String, Ipv4Addr>,
    /// "namespace/pod" -> echo server pid.
    pub servers: BTreeMap<String, i32>,
    /// True once `up` finished.
    pub ready: bool,
    /// Pods made unready with `trellis-lab ready POD false` ("namespace/pod").
    #[serde(default)]
    pub not_ready: BTreeSet<String>,
    /// Pods being deleted, inside their grace period ("namespace/pod").
    #[serde(default)]
    pub terminating: BTreeSet<String>,
    /// The `trellis-lab` executable `up` ran as; re-run as `serve` in pods made later.
    #[serde(default)]
    pub lab_exe: Option<PathBuf>,
}

pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl LabState {
    pub fn new(plan: LabPlan, bin_dir: PathBuf, repair_interval_secs: Option<u64>) -> LabState {
        LabState {
            plan,
            bin_dir,
            repair_interval_secs,
            agents: BTreeMap::new(),
            pod_ips: BTreeMap::new(),
            servers: BTreeMap::new(),
            ready: false,
            not_ready: BTreeSet::new(),
            terminating: BTreeSet::new(),
            lab_exe: None,
        }
    }

    pub fn dirs(&self) -> LabDirs {
        LabDirs::new(&self.plan.name)
    }

    pub fn save(&self) -> Result<()> {
        let dirs = self.dirs();
        let path = dirs.state_file();
        let tmp = dirs.root.join(".state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| LabError::io("writing state", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("writing state", &path, e))
    }

    pub fn load(lab: &str) -> Result<LabState> {
        let path = LabDirs::new(lab).state_file();
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading lab state", &path, e))?;
        serde_json::from_str(&text).map_err(|e| LabError::State(format!("{}: {e}", path.display())))
    }

    /// Finds a pod by `name` or `namespace/name`.
    pub fn pod(&self, name: &str) -> Option<&PodPlan> {
        match name.split_once('/') {
            Some((ns, n)) => self.plan.pods.iter().find(|p| p.namespace == ns && p.name == n),
            None => self.plan.pods.iter().find(|p| p.name == name),
        }
    }

    pub fn pod_ip(&self, pod: &PodPlan) -> Option<Ipv4Addr> {
        self.pod_ips.get(&pod_key(&pod.namespace, &pod.name)).copied()
    }

    /// The pod's readiness (`trellis-lab ready`); every pod starts ready.
    pub fn pod_ready(&self, pod: &PodPlan) -> bool {
        !self.not_ready.contains(&pod_key(&pod.namespace, &pod.name))
    }

    pub fn pod_terminating(&self, pod: &PodPlan) -> bool {
        self.terminating.contains(&pod_key(&pod.namespace, &pod.name))
    }
}

/// An exclusive lock on a lab's state: commands that read, change and write state.json hold it, so a `ready`
/// during a `delete pod --grace-secs` does not undo the other's write. Released on drop.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn acquire(lab: &str) -> Result<StateLock> {
        use std::os::fd::AsRawFd;
        let dirs = LabDirs::new(lab);
        if !dirs.root.is_dir() {
            // The same error `load` gives for a lab that is not there.
            let e = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(LabError::io("reading lab state", dirs.state_file(), e));
        }
        let path = dirs.root.join("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io("locking lab state", &path, e))?;
        // SAFETY: flock on an fd we own; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(LabError::io("locking lab state", &path, std::io::Error::last_os_error()));
        }
        Ok(StateLock { _file: file })
    }
}

/// The labs that have a state dir.
pub fn labs_present() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(names::STATE_ROOT) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// `--name` if given, else the only lab that is up.
pub fn resolve_lab_name(given: Option<&str>) -> Result<String> {
    match given {
        Some(n) => pick_lab(Some(n), &[]),
        None => pick_lab(None, &labs_present()),
    }
}

/// The lab a command means: `given` (validated), else the only one of `present`. Never guesses between several.
pub fn pick_lab(given: Option<&str>, present: &[String]) -> Result<String> {
    if let Some(n) = given {
        crate::topology::validate_lab_name(n)?;
        return Ok(n.to_string());
    }
    match present {
        [one] => Ok(one.clone()),
        [] => Err(LabError::NoLabUp),
        many => Err(LabError::SeveralLabsUp(many.to_vec())),
    }
}

pub fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| LabError::io("creating directory", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_one_lab_up_is_picked() {
        assert_eq!(pick_lab(None, &labs(&["demo"])).unwrap(), "demo");
        assert_eq!(pick_lab(Some("mine"), &labs(&["demo", "other"])).unwrap(), "mine");
    }

    #[test]
    fn no_lab_up_says_how_to_start_one() {
        let e = pick_lab(None, &[]).unwrap_err().to_string();
        assert!(e.contains("no lab is up"), "{e}");
        assert!(e.contains("trellis-lab up"), "{e}");
        assert!(!e.contains("pass --name"), "{e}");
    }

    #[test]
    fn several_labs_up_are_named_not_guessed() {
        let e = pick_lab(None, &labs(&["a1", "b2"])).unwrap_err().to_string();
        assert!(e.contains("several labs are up (a1, b2)") && e.contains("--name"), "{e}");
    }

    #[test]
    fn a_given_name_is_validated() {
        assert!(pick_lab(Some("BAD-name"), &[]).is_err());
    }
}
