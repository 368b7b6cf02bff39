use super::*;
use crate::ops;
use crate::store::with_lock;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// name -> content of every file in the store directory.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), fs::read(e.path()).unwrap())
        })
        .collect()
}

fn cfg(data_dir: &Path, ranges: serde_json::Value) -> IpamConfig {
    IpamConfig::from_ipam_value("mynet", &json!({"ranges": ranges, "dataDir": data_dir})).unwrap()
}

#[test]
fn layout_is_byte_for_byte_host_local() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]));
    let mut s = DiskStore::open_config(&c).unwrap();
    assert_eq!(s.dir(), tmp.path().join("mynet"));
    ops::allocate(&mut s, &c, "  0123abcd  ", "eth0").unwrap();
    let snap = snapshot(s.dir());
    let expected: BTreeMap<String, Vec<u8>> = [
        ("lock", &b""[..]),
        ("10.1.0.2", b"0123abcd\r\neth0"),
        ("fd00:1::2", b"0123abcd\r\neth0"),
        ("last_reserved_ip.0", b"10.1.0.2"),
        ("last_reserved_ip.1", b"fd00:1::2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_vec()))
    .collect();
    assert_eq!(snap, expected);
    let mode = fs::metadata(s.dir().join("10.1.0.2")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let dmode = fs::metadata(s.dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dmode & !0o022, 0o755 & !0o022, "directory 0755 (minus umask)");
}

#[test]
fn reads_files_written_by_host_local_including_the_old_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mynet");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.1.0.5"), "ctr-new\r\neth0").unwrap();
    fs::write(dir.join("10.1.0.6"), "ctr-old\n").unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.1.0.6").unwrap();
    fs::write(dir.join("unrelated.txt"), "10.1.0.7").unwrap();
    fs::create_dir(dir.join("10.1.0.9")).unwrap();
    let mut s = DiskStore::open(tmp.path(), "mynet").unwrap();
    let mut leases = with_lock(&mut s, |s| s.list()).unwrap();
    leases.sort_by_key(|l| l.ip);
    assert_eq!(
        leases,
        vec![
            Lease { ip: ip("10.1.0.5"), id: "ctr-new".into(), ifname: Some("eth0".into()) },
            Lease { ip: ip("10.1.0.6"), id: "ctr-old".into(), ifname: None },
        ]
    );
    assert_eq!(with_lock(&mut s, |s| s.last_reserved(0)).unwrap(), Some(ip("10.1.0.6")));
    assert_eq!(with_lock(&mut s, |s| s.last_reserved(1)).unwrap(), None);
    // Round-robin continues after host-local's last reservation.
    let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
    let a = ops::allocate(&mut s, &c, "ctr-x", "eth0").unwrap();
    assert_eq!(a[0].address.addr(), ip("10.1.0.7"));
    // A directory named like an address is neither a lease nor handed out.
    let b = ops::allocate(&mut s, &c, "ctr-y", "eth0").unwrap();
    assert_eq!(b[0].address.addr(), ip("10.1.0.8"));
    let c2 = ops::allocate(&mut s, &c, "ctr-z", "eth0").unwrap();
    assert_eq!(c2[0].address.addr(), ip("10.1.0.10"));
    assert_eq!(with_lock(&mut s, |s| s.release_by_id("ctr-old", "eth0")).unwrap(), vec![ip("10.1.0.6")]);
    assert!(!dir.join("10.1.0.6").exists());
}

#[test]
fn reserve_is_exclusive_and_release_tolerates_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = DiskStore::open(tmp.path(), "n").unwrap();
    with_lock(&mut s, |s| {
        assert!(s.reserve("a", "eth0", ip("10.0.0.2"), 0)?);
        assert!(!s.reserve("b", "eth0", ip("10.0.0.2"), 0)?);
        assert_eq!(s.get_by_id("a", "eth0")?, vec![ip("10.0.0.2")]);
        assert!(s.get_by_id("b", "eth0")?.is_empty());
        s.release(ip("10.0.0.2"))?;
        s.release(ip("10.0.0.2"))?;
        assert!(s.list()?.is_empty());
        Ok(())
    })
    .unwrap();
}

#[test]
fn empty_file_from_a_crash_is_an_orphan_that_gc_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/29"}]]));
    let mut s = DiskStore::open_config(&c).unwrap();
    // kill -9 between O_EXCL create and write leaves an empty file.
    fs::write(s.dir().join("10.1.0.2"), "").unwrap();
    let leases = with_lock(&mut s, |s| s.list()).unwrap();
    assert_eq!(leases.len(), 1);
    assert!(leases[0].is_orphan());
    // The orphan is not handed out again...
    let a = ops::allocate(&mut s, &c, "c1", "eth0").unwrap();
    assert_eq!(a[0].address.addr(), ip("10.1.0.3"));
    // ...nor released by anyone's DEL, but GC frees it.
    ops::release(&mut s, &c, "c2", "eth0").unwrap();
    assert!(s.dir().join("10.1.0.2").exists());
    let released = ops::gc(&mut s, &c, &[("c1".into(), "eth0".into())]).unwrap();
    assert_eq!(released, vec![ip("10.1.0.2")]);
    let names: Vec<String> = snapshot(s.dir()).into_keys().collect();
    assert_eq!(names, vec!["10.1.0.3", "last_reserved_ip.0", "lock"]);
}

#[test]
fn lock_excludes_a_second_opener_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = DiskStore::open(tmp.path(), "n").unwrap();
    let mut b = DiskStore::open(tmp.path(), "n").unwrap().with_lock_timeout(Duration::from_millis(50));
    a.lock().unwrap();
    let e = b.lock().unwrap_err();
    assert_eq!(e.cni_code(), 11, "{e}");
    assert!(matches!(e, IpamError::StoreBusy { .. }));
    a.unlock().unwrap();
    b.lock().unwrap();
    b.unlock().unwrap();
    // Dropping a locked store releases the flock (as process death does).
    a.lock().unwrap();
    drop(a);
    b.lock().unwrap();
}

#[test]
fn lock_waits_for_a_holder_that_finishes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = DiskStore::open(tmp.path(), "n").unwrap();
    a.lock().unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let path = tmp.path().to_path_buf();
    let seen = released.clone();
    let t = std::thread::spawn(move || {
        let mut b = DiskStore::open(&path, "n").unwrap().with_lock_timeout(Duration::from_secs(60));
        started_tx.send(()).unwrap();
        b.lock().map(|()| seen.load(Ordering::SeqCst))
    });
    started_rx.recv().unwrap();
    // While `a` holds the lock, `b` must still be waiting, however long we look (no figure: only an order).
    for _ in 0..20 {
        assert!(!t.is_finished(), "the second opener got past a held lock (or gave up at once)");
        std::thread::sleep(Duration::from_millis(5));
    }
    released.store(true, Ordering::SeqCst);
    a.unlock().unwrap();
    assert!(t.join().unwrap().unwrap(), "the waiter got the lock before the holder released it");
}

/// CPU time (user + system) of the calling thread, from /proc/thread-self/stat, in clock ticks (1/100 s).
fn thread_cpu_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    // Fields after the command: state is field 3 of the full line; utime and stime are fields 14 and 15.
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_waiter_sleeps_between_attempts_instead_of_spinning() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = DiskStore::open(tmp.path(), "n").unwrap();
    a.lock().unwrap();
    let path = tmp.path().to_path_buf();
    let t = std::thread::spawn(move || {
        let mut b = DiskStore::open(&path, "n").unwrap().with_lock_timeout(Duration::from_secs(60));
        let (cpu, wall) = (thread_cpu_ticks(), std::time::Instant::now());
        b.lock().unwrap();
        (thread_cpu_ticks() - cpu, wall.elapsed())
    });
    // Hold the lock long enough for a spinning waiter to burn many ticks (the waiter needs no wake-up from us).
    std::thread::sleep(Duration::from_secs(1));
    a.unlock().unwrap();
    let (ticks, wall) = t.join().unwrap();
    // A backoff that sleeps uses next to nothing (a tick or two at most); a busy loop uses its whole core, or a
    // good part of one on a loaded machine. The bar (a tenth of the wait) is far from both.
    let cpu = Duration::from_millis(ticks * 10);
    assert!(cpu * 10 < wall, "waiting for the lock burnt {cpu:?} of CPU in {wall:?}: it spins");
}

#[test]
fn locking_twice_is_refused_and_unlocking_an_unlocked_store_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = DiskStore::open(tmp.path(), "n").unwrap();
    a.unlock().unwrap();
    a.lock().unwrap();
    let e = a.lock().unwrap_err();
    assert!(matches!(e, IpamError::Store(_)), "{e}");
    a.unlock().unwrap();
    // Really released: another opener gets it at once.
    let mut b = DiskStore::open(tmp.path(), "n").unwrap().with_lock_timeout(Duration::ZERO);
    b.lock().unwrap();
}

/// Every error the filesystem gives, other than the one each step expects, is an error of the store: never
/// "address in use", "no lease", "nothing to release" or "not written yet".
mod error_kinds {
    use super::*;

    fn store() -> (tempfile::TempDir, DiskStore) {
        let tmp = tempfile::tempdir().unwrap();
        let s = DiskStore::open(tmp.path(), "n").unwrap();
        (tmp, s)
    }

    #[test]
    fn reserve_fails_when_the_lease_cannot_be_created_for_another_reason_than_in_use() {
        let (_tmp, mut s) = store();
        // ENOENT: the store directory vanished. host-local's answer would be "in use" only for EEXIST.
        fs::remove_dir_all(s.dir()).unwrap();
        let e = s.reserve("a", "eth0", ip("10.0.0.2"), 0).unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "reserve", .. }), "{e}");
        assert_eq!(e.cni_code(), 5, "{e}");
    }

    /// A directory nobody may create files in: mode 0555 (EACCES for a user), and for root, who ignores modes,
    /// the immutable attribute (EPERM). Undone on Drop.
    struct ReadOnly(PathBuf);

    impl ReadOnly {
        fn new(dir: &Path) -> ReadOnly {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
            if trellis_test_support::is_root() {
                let st = std::process::Command::new("chattr").arg("+i").arg(dir).status().expect("run chattr");
                assert!(st.success(), "chattr +i {}", dir.display());
            }
            ReadOnly(dir.to_owned())
        }
    }

    impl Drop for ReadOnly {
        fn drop(&mut self) {
            if trellis_test_support::is_root() {
                let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
            }
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        }
    }

    #[test]
    fn reserve_in_a_read_only_store_is_an_error_not_address_in_use() {
        if trellis_test_support::is_root() {
            trellis_test_support::require_tool!("chattr");
        }
        let (_tmp, mut s) = store();
        let e = {
            let _ro = ReadOnly::new(s.dir());
            s.reserve("a", "eth0", ip("10.0.0.2"), 0).unwrap_err()
        };
        assert!(
            // EACCES and EPERM are both PermissionDenied.
            matches!(&e, IpamError::Io { op: "reserve", source, .. } if source.kind() == ErrorKind::PermissionDenied),
            "{e}"
        );
        assert_eq!(e.cni_code(), 5, "{e}");
        // Writable again: the address was never taken.
        assert!(s.reserve("a", "eth0", ip("10.0.0.2"), 0).unwrap());
    }

    #[test]
    fn reserve_is_all_or_nothing_when_last_reserved_cannot_be_written() {
        let (_tmp, mut s) = store();
        fs::create_dir(s.dir().join("last_reserved_ip.0")).unwrap();
        let e = s.reserve("a", "eth0", ip("10.0.0.2"), 0).unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "write", .. }), "{e}");
        assert!(!s.dir().join("10.0.0.2").exists(), "the lease must go when its last_reserved write fails");
        // The other range set's marker is a file: that reservation works.
        assert!(s.reserve("a", "eth0", ip("10.0.0.3"), 1).unwrap());
        assert_eq!(fs::read_to_string(s.dir().join("last_reserved_ip.1")).unwrap(), "10.0.0.3");
    }

    #[test]
    fn last_reserved_is_none_only_when_missing() {
        let (_tmp, mut s) = store();
        assert_eq!(s.last_reserved(0).unwrap(), None);
        fs::write(s.dir().join("last_reserved_ip.0"), "garbage").unwrap();
        assert_eq!(s.last_reserved(0).unwrap(), None, "a garbled marker only costs round-robin");
        fs::create_dir(s.dir().join("last_reserved_ip.1")).unwrap();
        let e = s.last_reserved(1).unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "read", .. }), "{e}");
    }

    #[test]
    fn release_tolerates_only_a_missing_lease() {
        let (_tmp, mut s) = store();
        s.release(ip("10.0.0.9")).unwrap();
        // A directory where the lease should be cannot be unlinked: EISDIR is an error, not "already gone".
        fs::create_dir(s.dir().join("10.0.0.9")).unwrap();
        let e = s.release(ip("10.0.0.9")).unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "release", .. }), "{e}");
    }

    #[test]
    fn release_by_id_releases_what_it_can_and_reports_the_first_failure() {
        let (_tmp, mut s) = store();
        fs::write(s.dir().join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::write(s.dir().join("10.0.0.3"), "c1\r\neth0").unwrap();
        assert_eq!(s.release_by_id("c1", "eth0").unwrap().len(), 2);
        assert!(s.list().unwrap().is_empty());
        fs::write(s.dir().join("10.0.0.4"), "c2\r\neth0").unwrap();
        assert_eq!(s.release_by_id("c2", "eth0").unwrap(), vec![ip("10.0.0.4")]);
    }

    #[test]
    fn list_skips_a_vanished_lease_but_fails_on_an_unreadable_one() {
        let (_tmp, mut s) = store();
        fs::write(s.dir().join("10.0.0.2"), "c1\r\neth0").unwrap();
        // A dangling link reads as NotFound, like a lease released between readdir and read: skipped.
        std::os::unix::fs::symlink("gone", s.dir().join("10.0.0.3")).unwrap();
        assert_eq!(s.list().unwrap().len(), 1);
        // A link loop is ELOOP: the store is broken, and pretending the address is free would hand it out twice.
        std::os::unix::fs::symlink("10.0.0.4", s.dir().join("10.0.0.4")).unwrap();
        let e = s.list().unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "read", .. }), "{e}");
    }

    #[test]
    fn list_fails_when_the_directory_is_gone() {
        let (_tmp, mut s) = store();
        fs::remove_dir_all(s.dir()).unwrap();
        assert!(matches!(s.list().unwrap_err(), IpamError::Io { op: "read directory", .. }));
    }

    #[test]
    fn check_writable_fails_when_the_probe_cannot_be_written_and_cleans_up_otherwise() {
        let (tmp, mut s) = store();
        s.check_writable().unwrap();
        let names: Vec<String> = snapshot(s.dir()).into_keys().collect();
        assert_eq!(names, vec!["lock"], "the probe must not stay behind");
        // The probe's name taken by a non-empty directory: the store cannot be written (root included).
        let probe = s.dir().join(format!(".status-probe.{}", std::process::id()));
        fs::create_dir(&probe).unwrap();
        fs::write(probe.join("x"), "").unwrap();
        let e = s.check_writable().unwrap_err();
        assert!(matches!(e, IpamError::Io { op: "write to store", .. }), "{e}");
        // And STATUS says so, although the directory itself is still listable.
        let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
        let mut s = DiskStore::open(tmp.path(), "n").unwrap();
        assert!(ops::status(&mut s, &IpamConfig { network: "n".into(), ..c }).is_err());
    }

    #[test]
    fn open_creates_the_lock_file_and_fails_on_an_unusable_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        DiskStore::open(tmp.path(), "n").unwrap();
        assert!(tmp.path().join("n").join(LOCK_FILE).is_file());
        // dataDir is a file: the store directory cannot be made.
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(DiskStore::open(&file, "n"), Err(IpamError::Io { op: "create store directory", .. })));
    }
}

#[test]
fn status_fails_when_the_store_directory_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}]]));
    let mut s = DiskStore::open_config(&c).unwrap();
    ops::status(&mut s, &c).unwrap();
    assert!(snapshot(s.dir()).keys().all(|k| !k.starts_with(".status")), "probe cleaned up");
    fs::remove_dir_all(s.dir()).unwrap();
    let e = ops::status(&mut s, &c).unwrap_err();
    assert_eq!(e.cni_code(), 5, "{e}");
}

#[test]
fn parse_lease_forms() {
    assert_eq!(parse_lease(ip("10.0.0.1"), "").id, "");
    assert_eq!(parse_lease(ip("10.0.0.1"), "  \n").ifname, None);
    assert_eq!(
        parse_lease(ip("10.0.0.1"), "abc\r\neth0\n"),
        Lease { ip: ip("10.0.0.1"), id: "abc".into(), ifname: Some("eth0".into()) }
    );
    assert_eq!(parse_lease(ip("10.0.0.1"), "abc"), Lease { ip: ip("10.0.0.1"), id: "abc".into(), ifname: None });
}

/// Counts the store operations an allocation makes: what "fast on a busy range" means without a stopwatch (the
/// figure belongs to a benchmark, not to a test).
struct Counting {
    inner: DiskStore,
    lists: usize,
    reserves: usize,
}

impl Store for Counting {
    fn lock(&mut self) -> Result<()> {
        self.inner.lock()
    }
    fn unlock(&mut self) -> Result<()> {
        self.inner.unlock()
    }
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, rangeset: usize) -> Result<bool> {
        self.reserves += 1;
        self.inner.reserve(id, ifname, ip, rangeset)
    }
    fn last_reserved(&mut self, rangeset: usize) -> Result<Option<IpAddr>> {
        self.inner.last_reserved(rangeset)
    }
    fn release(&mut self, ip: IpAddr) -> Result<()> {
        self.inner.release(ip)
    }
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.inner.release_by_id(id, ifname)
    }
    fn get_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.inner.get_by_id(id, ifname)
    }
    fn list(&mut self) -> Result<Vec<Lease>> {
        self.lists += 1;
        self.inner.list()
    }
    fn check_writable(&mut self) -> Result<()> {
        self.inner.check_writable()
    }
}

#[test]
fn allocation_on_a_busy_16_reads_the_store_once_and_creates_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), json!([[{"subnet": "10.2.0.0/16"}]]));
    let mut s = DiskStore::open_config(&c).unwrap();
    for i in 0..300 {
        ops::allocate(&mut s, &c, &format!("c{i}"), "eth0").unwrap();
    }
    // Force a long walk over used addresses: restart round-robin from the beginning.
    fs::remove_file(s.dir().join("last_reserved_ip.0")).unwrap();
    let mut counting = Counting { inner: s, lists: 0, reserves: 0 };
    let a = ops::allocate(&mut counting, &c, "new", "eth0").unwrap();
    assert_eq!(a[0].address.addr(), ip("10.2.1.46"), "first free after 300 used (skipping the gateway)");
    // One directory read, one O_EXCL create: no per-address stat or create over the 300 used ones.
    assert_eq!((counting.lists, counting.reserves), (1, 1));
}

#[test]
fn faults_over_the_disk_store_leave_no_files_behind() {
    use crate::store::FaultyStore;
    let mut n = 1;
    loop {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path(), json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]));
        let mut s = FaultyStore::new(DiskStore::open_config(&c).unwrap(), n);
        let r = ops::allocate(&mut s, &c, "c1", "eth0");
        if !s.fired() {
            assert_eq!(r.unwrap().len(), 2);
            break;
        }
        let e = r.unwrap_err();
        let left = with_lock(&mut s.inner, |d| d.list()).unwrap();
        if e.to_string().contains("unlock") {
            // The work was done before the failing unlock; the runtime's DEL cleans it.
            ops::release(&mut s.inner, &c, "c1", "eth0").unwrap();
        } else {
            assert!(left.is_empty(), "fault at op {n} ({e}) left {left:?}");
        }
        // The flock is free again: another opener gets it at once.
        let mut other = DiskStore::open_config(&c).unwrap().with_lock_timeout(Duration::from_millis(10));
        other.lock().unwrap();
        n += 1;
        assert!(n < 50);
    }
}
