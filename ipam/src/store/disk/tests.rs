use super::*;
use crate::ops;
use crate::store::with_lock;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

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
    let tmp = tempfile::tempdir().unwrap();
    let mut a = DiskStore::open(tmp.path(), "n").unwrap();
    a.lock().unwrap();
    let path = tmp.path().to_path_buf();
    let t = std::thread::spawn(move || {
        let mut b = DiskStore::open(&path, "n").unwrap().with_lock_timeout(Duration::from_secs(10));
        let start = Instant::now();
        b.lock().unwrap();
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(100));
    a.unlock().unwrap();
    let waited = t.join().unwrap();
    assert!(waited >= Duration::from_millis(80), "waited only {waited:?}");
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

#[test]
fn allocation_is_fast_on_a_busy_16() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), json!([[{"subnet": "10.2.0.0/16"}]]));
    let mut s = DiskStore::open_config(&c).unwrap();
    for i in 0..300 {
        ops::allocate(&mut s, &c, &format!("c{i}"), "eth0").unwrap();
    }
    // Force a long walk over used addresses: restart round-robin from the beginning.
    fs::remove_file(s.dir().join("last_reserved_ip.0")).unwrap();
    let start = Instant::now();
    let a = ops::allocate(&mut s, &c, "new", "eth0").unwrap();
    let took = start.elapsed();
    assert_eq!(a[0].address.addr(), ip("10.2.1.46"), "first free after 300 used (skipping the gateway)");
    // Generous bound for a debug build on a loaded CI box; the point is no per-address stat.
    assert!(took < Duration::from_millis(500), "allocate took {took:?}");
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
