//! The `files` source: a directory of Kubernetes manifests (YAML or JSON, multi-document YAML and
//! `kind: List` allowed), watched for changes.
//!
//! inotify on the directory says *when* to look; a scan by (mtime, size, inode) says *what*
//! changed, so only changed files are read and atomic rename-replace (ConfigMap mounts' symlink
//! swap included) is seen. A burst of events (2000 files written) settles into a few scans. A
//! slow poll ([`FilesSource::interval`]) is the fallback: for filesystems without inotify, a
//! directory that does not exist yet, a directory replaced under the watch, or an inotify limit
//! reached. Files whose name starts with `.` are ignored so writers can stage temp files in the
//! same directory.
//!
//! A file that is not valid YAML keeps contributing what it contributed last time it was valid
//! (nothing, if never): a half-written file must not make nodes vanish and routes flap. A
//! document that is valid YAML but not a usable object is skipped alone. Both are logged and
//! counted in `trellis_controlplane_invalid_objects_total`.
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{ControlPlane, Event, ObjectKey, Resource};
use crate::metrics::{self, Metrics};
use crate::{Error, Result};

const SOURCE: &str = "files";

/// The longest a burst of changes may hold back a scan.
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// How often a manifests directory that does not exist is looked for again.
const MISSING_DIR_RETRY: Duration = Duration::from_millis(250);

/// Outcome of decoding one file's text.
#[derive(Debug, Default)]
pub struct Decoded {
    pub objects: Vec<Resource>,
    /// Documents/objects skipped, each with a reason.
    pub invalid: Vec<String>,
    /// The text is not valid YAML/JSON (from some document on).
    pub syntax_error: Option<String>,
}

/// Decode the text of one manifest file. Pure.
pub fn decode(text: &str) -> Decoded {
    let mut out = Decoded::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.syntax_error = Some(format!("document {}: {e}", i + 1));
                // The YAML parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a leading or trailing `---`
        }
        let json = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(e) => {
                out.invalid.push(format!("document {}: not representable as JSON: {e}", i + 1));
                continue;
            }
        };
        decode_value(json, &format!("document {}", i + 1), &mut out);
    }
    out
}

fn decode_value(v: serde_json::Value, at: &str, out: &mut Decoded) {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
    match kind.as_str() {
        "List" | "NodeList" | "ServiceList" | "EndpointSliceList" => match v.get("items").and_then(|i| i.as_array()) {
            Some(items) => {
                for (j, item) in items.iter().enumerate() {
                    decode_value(item.clone(), &format!("{at} item {}", j + 1), out);
                }
            }
            None => out.invalid.push(format!("{at}: {kind} without an items array")),
        },
        "Node" => {
            // The list item may omit apiVersion (kubectl output never does, people might).
            let mut v = v;
            if v.get("apiVersion").is_none() {
                v["apiVersion"] = serde_json::Value::String("v1".into());
            }
            match serde_json::from_value::<k8s_openapi::api::core::v1::Node>(v) {
                Ok(n) => {
                    let r = Resource::Node(Box::new(n));
                    if r.key().is_some() {
                        out.objects.push(r);
                    } else {
                        out.invalid.push(format!("{at}: Node without metadata.name"));
                    }
                }
                Err(e) => out.invalid.push(format!("{at}: bad Node: {e}")),
            }
        }
        "Service" => typed(v, at, "v1", "Service", |s| Resource::Service(Box::new(s)), out),
        "EndpointSlice" => {
            typed(v, at, "discovery.k8s.io/v1", "EndpointSlice", |s| Resource::EndpointSlice(Box::new(s)), out)
        }
        "" => out.invalid.push(format!("{at}: object without kind")),
        other => debug!(kind = other, "{at}: ignoring kind the agent does not use"),
    }
}

/// Decodes one object of a typed kind (apiVersion defaulted as for Nodes).
fn typed<K: serde::de::DeserializeOwned>(
    mut v: serde_json::Value,
    at: &str,
    api_version: &str,
    kind: &str,
    wrap: fn(K) -> Resource,
    out: &mut Decoded,
) {
    if v.get("apiVersion").is_none() {
        v["apiVersion"] = serde_json::Value::String(api_version.into());
    }
    match serde_json::from_value::<K>(v) {
        Ok(o) => {
            let r = wrap(o);
            if r.key().is_some() {
                out.objects.push(r);
            } else {
                out.invalid.push(format!("{at}: {kind} without metadata.name"));
            }
        }
        Err(e) => out.invalid.push(format!("{at}: bad {kind}: {e}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    size: u64,
    ino: u64,
}

struct FileState {
    stamp: Stamp,
    objects: Vec<Resource>,
}

/// The directory poller: remembers what every file contributed and reports the difference.
pub struct Poller {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    merged: BTreeMap<ObjectKey, Resource>,
    metrics: Metrics,
}

impl Poller {
    pub fn new(dir: impl Into<PathBuf>, metrics: Metrics) -> Self {
        Poller { dir: dir.into(), files: BTreeMap::new(), merged: BTreeMap::new(), metrics }
    }

    fn is_manifest(p: &Path) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with('.') && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
    }

    /// Scan the directory once; return the events describing what changed since the last scan.
    /// An unreadable directory is an error and changes nothing.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut seen = BTreeSet::new();
        for entry in rd.flatten() {
            let path = entry.path();
            if !Self::is_manifest(&path) {
                continue;
            }
            // Follow symlinks (ConfigMap mounts are symlink farms).
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            seen.insert(path.clone());
            let stamp = Stamp {
                mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
                size: md.len(),
                ino: md.ino(),
            };
            if self.files.get(&path).map(|f| f.stamp) == Some(stamp) {
                continue;
            }
            let text = match std::fs::read(&path) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest; will retry");
                    continue;
                }
            };
            let decoded = decode(&text);
            for why in &decoded.invalid {
                warn!(file = %path.display(), "skipping invalid object: {why}");
                self.metrics.inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", SOURCE), ("reason", "object")]);
            }
            let objects = match &decoded.syntax_error {
                Some(why) => {
                    warn!(file = %path.display(), "manifest is not valid YAML/JSON, keeping what it held before: {why}");
                    self.metrics
                        .inc(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", SOURCE), ("reason", "syntax")]);
                    self.files.get(&path).map(|f| f.objects.clone()).unwrap_or_default()
                }
                None => decoded.objects,
            };
            debug!(file = %path.display(), objects = objects.len(), "manifest loaded");
            self.files.insert(path, FileState { stamp, objects });
        }
        self.files.retain(|p, _| seen.contains(p));

        // Files in name order; a later file wins when two define the same object.
        let mut merged = BTreeMap::new();
        for f in self.files.values() {
            for o in &f.objects {
                if let Some(k) = o.key() {
                    merged.insert(k, o.clone());
                }
            }
        }
        let mut events = Vec::new();
        for (k, o) in &merged {
            if self.merged.get(k) != Some(o) {
                events.push(Event::Applied(o.clone()));
            }
        }
        for k in self.merged.keys() {
            if !merged.contains_key(k) {
                events.push(Event::Deleted(k.clone()));
            }
        }
        self.merged = merged;
        Ok(events)
    }
}

/// The `files` control plane source.
pub struct FilesSource {
    pub dir: PathBuf,
    /// Fallback poll interval; with `inotify` off, the only one.
    pub interval: Duration,
    /// Watch the directory with inotify (scan on change); false: poll every `interval` only.
    pub inotify: bool,
    /// After a change event, scan once no further change came for this long (at most 250 ms).
    pub settle: Duration,
    pub metrics: Metrics,
}

impl FilesSource {
    pub fn new(dir: impl Into<PathBuf>, metrics: Metrics) -> Self {
        FilesSource {
            dir: dir.into(),
            interval: Duration::from_secs(5),
            inotify: true,
            settle: Duration::from_millis(10),
            metrics,
        }
    }
}

/// Wait until no change arrived for `quiet` (or [`MAX_SETTLE`] passed): a burst of writes (2000
/// files) becomes one scan and one reconcile round instead of dozens.
async fn settle(wake: &tokio::sync::Notify, quiet: Duration) {
    use futures::FutureExt;
    let t0 = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(quiet).await;
        // A stored permit means more changes came in while we slept.
        if wake.notified().now_or_never().is_none() || t0.elapsed() >= MAX_SETTLE {
            return;
        }
    }
}

/// An inotify watch on the manifests directory; it wakes the scanning loop on every change.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    /// The inode watched: a directory replaced under the same path needs a new watch.
    ino: u64,
}

/// Watch `dir` unless it is already watched; None when it cannot be (missing, no inotify, limit
/// reached): the fallback poll covers that and this is retried on every scan.
fn ensure_watch(cur: Option<Watch>, dir: &Path, wake: &Arc<tokio::sync::Notify>) -> Result<Option<Watch>> {
    let ino = match std::fs::metadata(dir) {
        Ok(md) => md.ino(),
        Err(_) => return Ok(None),
    };
    if let Some(w) = cur.filter(|w| w.ino == ino) {
        return Ok(Some(w));
    }
    use notify::{event::AccessKind, EventKind, Watcher};
    let wake = wake.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Our own reads open files: not a change.
        if matches!(&ev, Ok(e) if matches!(e.kind, EventKind::Access(AccessKind::Open(_)))) {
            return;
        }
        wake.notify_one();
    })
    .map_err(|e| Error::Watch { path: dir.to_path_buf(), source: e })?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| Error::Watch { path: dir.to_path_buf(), source: e })?;
    debug!(dir = %dir.display(), "watching manifests with inotify");
    Ok(Some(Watch { _watcher: watcher, ino }))
}

impl ControlPlane for FilesSource {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn run(self: Box<Self>, tx: mpsc::Sender<Event>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let mut poller = Some(Poller::new(self.dir.clone(), self.metrics.clone()));
            let mut synced = false;
            let mut last_err: Option<String> = None;
            let wake = Arc::new(tokio::sync::Notify::new());
            let mut watch: Option<Watch> = None;
            let mut watch_err: Option<String> = None;
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the first scan needs no wait
            loop {
                // Watch before scanning, so a change made during the scan wakes the next one.
                if self.inotify {
                    match ensure_watch(watch.take(), &self.dir, &wake) {
                        Ok(w) => {
                            watch = w;
                            watch_err = None;
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            if watch_err.as_deref() != Some(&msg) {
                                warn!(error = %msg, interval = ?self.interval, "cannot watch manifests; polling");
                                watch_err = Some(msg);
                            }
                        }
                    }
                }
                let mut p = poller.take().expect("poller is put back after every poll");
                // Directory reads are blocking I/O: keep them off the async workers.
                let (p, res) = tokio::task::spawn_blocking(move || {
                    let r = p.poll();
                    (p, r)
                })
                .await
                .map_err(|source| Error::Task { what: "files poller task", source })?;
                poller = Some(p);
                match res {
                    Ok(events) => {
                        last_err = None;
                        for ev in events {
                            if let Event::Applied(r) = &ev {
                                self.metrics.inc(
                                    metrics::CONTROLPLANE_EVENTS,
                                    &[("source", SOURCE), ("kind", r.kind().as_str())],
                                );
                            }
                            if tx.send(ev).await.is_err() {
                                return Ok(());
                            }
                        }
                        if !synced {
                            synced = true;
                            info!(dir = %self.dir.display(), inotify = watch.is_some(), "initial manifests loaded");
                            if tx.send(Event::Synced).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        // Log once per distinct error; do not prune anything while blind.
                        let msg = e.to_string();
                        if last_err.as_deref() != Some(&msg) {
                            warn!(error = %msg, "manifests directory unreadable; retrying");
                            last_err = Some(msg);
                        }
                    }
                }
                // A directory that is not there (yet, or while being swapped) has nothing to
                // watch: look for it sooner than the slow poll.
                let missing = self.inotify && watch.is_none() && watch_err.is_none();
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep(MISSING_DIR_RETRY), if missing => {}
                    _ = wake.notified() => {
                        settle(&wake, self.settle).await;
                        tick.reset();
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_yaml(name: &str, cidr: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {cidr}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
        )
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Applied(r) => format!("+{}", r.key().unwrap().name),
                Event::Deleted(k) => format!("-{}", k.name),
                Event::Relisted(k, v) => format!("relist {k:?} {}", v.len()),
                Event::Synced => "synced".into(),
            })
            .collect()
    }

    #[test]
    fn decodes_multi_document_list_and_json() {
        let text = format!(
            "---\n{}---\n{}\n---\n",
            node_yaml("a", "10.244.1.0/24", "192.168.1.1"),
            r#"{"apiVersion":"v1","kind":"List","items":[{"kind":"Node","metadata":{"name":"b"}},{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}]}"#
        );
        let d = decode(&text);
        assert!(d.syntax_error.is_none(), "{:?}", d.syntax_error);
        assert!(d.invalid.is_empty(), "{:?}", d.invalid);
        let got: Vec<_> = d.objects.iter().map(|o| o.key().unwrap().name).collect();
        assert_eq!(got, vec!["a", "b"]);
    }

    #[test]
    fn bad_documents_are_reported_not_fatal() {
        let text = format!(
            "kind: Node\nmetadata:\n  name: 5\nspec: [1,2]\n---\nmetadata: {{name: nokind}}\n---\n{}",
            node_yaml("good", "10.244.2.0/24", "192.168.1.2")
        );
        let d = decode(&text);
        assert_eq!(d.invalid.len(), 2, "{:?}", d.invalid);
        assert_eq!(d.objects.len(), 1);
        let d = decode("kind: Node\nmetadata: {name: x\n  - broken: [\n");
        assert!(d.syntax_error.is_some());
        assert!(d.objects.is_empty());
    }

    #[test]
    fn poller_reports_add_change_delete_and_skips_bad_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut p = Poller::new(dir.path(), m.clone());
        assert!(p.poll().unwrap().is_empty());

        std::fs::write(dir.path().join("a.yaml"), node_yaml("a", "10.244.1.0/24", "192.168.1.1")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: Node").unwrap();
        std::fs::write(dir.path().join(".tmp.yaml"), node_yaml("hidden", "10.244.9.0/24", "192.168.1.9")).unwrap();
        assert_eq!(names(&p.poll().unwrap()), vec!["+a"]);
        // Nothing changed: nothing reported.
        assert!(p.poll().unwrap().is_empty());

        // Change: a's CIDR changes (size stays the same: the inode/mtime still tell).
        std::fs::write(dir.path().join("a.yaml"), node_yaml("a", "10.244.3.0/24", "192.168.1.1")).unwrap();
        let ev = p.poll().unwrap();
        assert_eq!(names(&ev), vec!["+a"]);
        let Event::Applied(Resource::Node(n)) = &ev[0] else { panic!("{ev:?}") };
        assert_eq!(n.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.3.0/24"));

        // A bad file is counted and skipped; the rest keeps working.
        std::fs::write(dir.path().join("bad.yaml"), "kind: [unclosed\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), node_yaml("b", "10.244.4.0/24", "192.168.1.4")).unwrap();
        assert_eq!(names(&p.poll().unwrap()), vec!["+b"]);
        assert_eq!(m.get(metrics::CONTROLPLANE_INVALID_OBJECTS, &[("source", "files"), ("reason", "syntax")]), 1.0);

        // A file that turns invalid keeps its previous objects (no flapping on partial writes).
        std::fs::write(dir.path().join("b.yml"), "kind: Node\nmetadata: {name: b\n").unwrap();
        assert!(p.poll().unwrap().is_empty());
        assert_eq!(m.total(metrics::CONTROLPLANE_INVALID_OBJECTS), 2.0);

        // Delete.
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(names(&p.poll().unwrap()), vec!["-a"]);
    }

    #[test]
    fn later_file_wins_and_deleting_it_restores_the_earlier() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Poller::new(dir.path(), Metrics::new());
        std::fs::write(dir.path().join("1.yaml"), node_yaml("a", "10.244.1.0/24", "192.168.1.1")).unwrap();
        std::fs::write(dir.path().join("2.yaml"), node_yaml("a", "10.244.2.0/24", "192.168.1.1")).unwrap();
        let ev = p.poll().unwrap();
        let Event::Applied(Resource::Node(n)) = &ev[0] else { panic!() };
        assert_eq!(n.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.2.0/24"));
        std::fs::remove_file(dir.path().join("2.yaml")).unwrap();
        let ev = p.poll().unwrap();
        assert_eq!(names(&ev), vec!["+a"]);
        let Event::Applied(Resource::Node(n)) = &ev[0] else { panic!() };
        assert_eq!(n.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.1.0/24"));
    }

    async fn next(rx: &mut mpsc::Receiver<Event>, what: &str) -> Event {
        // Generous: the machine may be loaded; the figure belongs to the benchmark, not here.
        let t0 = std::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("source ended");
        eprintln!("{what}: {:?}", t0.elapsed());
        ev
    }

    /// Initial objects, Synced, then a deletion and a change, with inotify on (and the fallback
    /// poll too slow to matter) or polling only.
    async fn source_follows_changes(inotify: bool) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), node_yaml("a", "10.244.1.0/24", "192.168.1.1")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), node_yaml("b", "10.244.2.0/24", "192.168.1.2")).unwrap();
        let mut src = FilesSource::new(dir.path(), Metrics::new());
        src.inotify = inotify;
        src.interval = if inotify { Duration::from_secs(3600) } else { Duration::from_millis(20) };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(src).run(tx));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut rx, "initial objects").await);
        }
        assert_eq!(names(&got), vec!["+a", "+b", "synced"]);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert_eq!(names(&[next(&mut rx, "deletion").await]), vec!["-a"]);
        std::fs::write(dir.path().join("b.yaml"), node_yaml("b", "10.244.9.0/24", "192.168.1.2")).unwrap();
        let Event::Applied(Resource::Node(n)) = next(&mut rx, "podCIDR change").await else { panic!() };
        assert_eq!(n.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.9.0/24"));
        // Staged temp file renamed into place (how kubectl-less writers and ConfigMaps update).
        std::fs::write(dir.path().join(".c.tmp"), node_yaml("c", "10.244.3.0/24", "192.168.1.3")).unwrap();
        std::fs::rename(dir.path().join(".c.tmp"), dir.path().join("c.yaml")).unwrap();
        assert_eq!(names(&[next(&mut rx, "rename into place").await]), vec!["+c"]);
        drop(rx);
        task.abort();
    }

    #[tokio::test]
    async fn source_sends_initial_objects_then_synced_then_changes() {
        source_follows_changes(true).await;
    }

    #[tokio::test]
    async fn source_without_inotify_polls() {
        source_follows_changes(false).await;
    }

    #[tokio::test]
    async fn a_directory_replaced_under_the_watch_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), node_yaml("a", "10.244.1.0/24", "192.168.1.1")).unwrap();
        let mut src = FilesSource::new(&dir, Metrics::new());
        src.interval = Duration::from_secs(3600);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(src).run(tx));
        assert_eq!(names(&[next(&mut rx, "a").await, next(&mut rx, "synced").await]), vec!["+a", "synced"]);
        // Swap in a new directory (a new inode) holding b instead of a.
        let new = root.path().join("new");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("b.yaml"), node_yaml("b", "10.244.2.0/24", "192.168.1.2")).unwrap();
        std::fs::rename(&dir, root.path().join("old")).unwrap();
        std::fs::rename(&new, &dir).unwrap();
        let mut got = vec![next(&mut rx, "swap").await, next(&mut rx, "swap").await];
        got.sort_by_key(|e| names(std::slice::from_ref(e)));
        assert_eq!(names(&got), vec!["+b", "-a"]);
        // And the new directory is watched.
        std::fs::write(dir.join("c.yaml"), node_yaml("c", "10.244.3.0/24", "192.168.1.3")).unwrap();
        assert_eq!(names(&[next(&mut rx, "change in the new directory").await]), vec!["+c"]);
        task.abort();
    }

    #[tokio::test]
    async fn missing_directory_is_not_synced_until_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("later");
        let mut src = FilesSource::new(&sub, Metrics::new());
        src.interval = Duration::from_millis(20);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(src).run(tx));
        assert!(tokio::time::timeout(Duration::from_millis(150), rx.recv()).await.is_err());
        std::fs::create_dir(&sub).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(ev, Event::Synced);
        task.abort();
    }
}
