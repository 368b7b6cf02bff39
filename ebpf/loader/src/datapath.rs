//! Loading, pinning and attaching. Maps are pinned by name under the node's directory, so traffic keeps flowing
//! while the agent is down and a restarted agent finds its entries. tc attachments are TCX links pinned in the
//! same directory (`links/<in|out>/<ifname>`): they outlive the agent too, and a new agent swaps its freshly
//! loaded program into them atomically instead of detaching and re-attaching.
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::{programs, Error, MapSizes, Result, OBJECT};

/// The bpffs directory of one node: `/sys/fs/bpf/trellis/<node>` in a cluster or lab.
#[derive(Clone, Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub const BPFFS: &'static str = "/sys/fs/bpf";

    /// `<bpffs>/trellis/<node>`.
    pub fn for_node(node: &str) -> PinDir {
        PinDir(Path::new(Self::BPFFS).join("trellis").join(node))
    }
    pub fn at(path: impl Into<PathBuf>) -> PinDir {
        PinDir(path.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// `links/<in|out>/<ifname>`. bpffs refuses names with a dot (reserved by the kernel), and interface names
    /// may have one (`eth0.100`): a dot becomes `:`, which no interface name contains, so no two names collide.
    fn link(&self, ifname: &str, dir: &str) -> PathBuf {
        self.0.join("links").join(dir).join(ifname.replace('.', ":"))
    }

    /// Creates the directory (and `links/`). bpffs must be mounted: we never mount it ourselves, since a mount
    /// made inside the agent's mount namespace would vanish with it and take the pins along.
    pub fn ensure(&self) -> Result<()> {
        let bpffs = Path::new(Self::BPFFS);
        if self.0.starts_with(bpffs) && !is_bpffs(bpffs) {
            return Err(Error::NoBpffs(bpffs.into()));
        }
        for dir in ["in", "out"] {
            let links = self.0.join("links").join(dir);
            std::fs::create_dir_all(&links).map_err(|source| Error::Io { what: "creating", path: links, source })?;
        }
        Ok(())
    }

    /// Removes every pin (maps and links) and the directory: the datapath of this node is gone for good.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::Io { what: "removing", path: self.0.clone(), source: e })
            }
            _ => Ok(()),
        }
    }
}

fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix_statfs(p).is_some_and(|t| t == BPF_FS_MAGIC)
}

fn nix_statfs(p: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, s a valid out buffer.
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0).then_some(s.f_type as i64)
}

/// The loaded datapath of one node.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinDir,
}

impl Datapath {
    /// Loads the programs with maps of the default sizes: [`Datapath::load_sized`].
    pub fn load(pins: PinDir) -> Result<Datapath> {
        Self::load_sized(pins, &MapSizes::default())
    }

    /// Loads the programs; maps are created and pinned in `pins`, or adopted when already pinned there. A pinned
    /// map of another size than `sizes` asks for is replaced by one of that size holding its entries.
    ///
    /// A program of the previous agent still attached keeps writing into the old map until this agent's
    /// programs replace it (its next attach round): a connection opened in that window has no conntrack entry in
    /// the new map, and its next packet chooses its backend again (the same one, by the flow hash, while the
    /// backends are unchanged).
    pub fn load_sized(pins: PinDir, sizes: &MapSizes) -> Result<Datapath> {
        pins.ensure()?;
        sizes.validate().map_err(Error::Config)?;
        let asides = crate::sizes::set_aside(&pins, sizes)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pins.path());
        for (name, size) in sizes.entries() {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = match loader.load(OBJECT) {
            Ok(e) => e,
            Err(e) => {
                crate::sizes::undo_aside(&asides);
                return Err(e.into());
            }
        };
        crate::sizes::finish_resize(&asides)?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::FROM_UPLINK] {
            classifier(&mut ebpf, name)?.load().map_err(|source| Error::Program { name, source })?;
        }
        for (name, _) in programs::SOCK {
            sock_addr(&mut ebpf, name)?.load().map_err(|source| Error::Program { name, source })?;
        }
        Ok(Datapath { ebpf, pins })
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Runs tc program `name` on `packet` (an Ethernet frame) `repeat` times in the kernel (`BPF_PROG_TEST_RUN`):
    /// (the program's verdict, average ns per run). What one program run costs, free of the noise of a shared
    /// machine's scheduler; the datapath cost benchmark uses it.
    pub fn test_run(&self, name: &'static str, packet: &[u8], repeat: u32) -> Result<(u32, u32)> {
        use std::os::fd::{AsFd, AsRawFd};
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        let fd = prog.fd().map_err(|source| Error::Program { name, source })?;
        // The test-run part of `union bpf_attr`.
        #[repr(C)]
        #[derive(Default)]
        struct TestRun {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            // Explicit, so it is zero: the kernel refuses an attribute with non-zero bytes past its last field.
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestRun {
            prog_fd: fd.as_fd().as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_size_out: out.len() as u32,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: `attr` points at `packet` and `out`, which outlive the call; the kernel writes at most
        // `out.len()` bytes into `out`.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRun, std::mem::size_of::<TestRun>())
        };
        if r < 0 {
            let io_error = std::io::Error::last_os_error();
            let source = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_test_run",
                io_error,
            });
            return Err(Error::Program { name, source });
        }
        Ok((attr.retval, attr.duration))
    }

    /// Attaches the pod programs to a pod's host veth (in the calling thread's network namespace): `from_pod` on
    /// ingress, `to_pod` on egress. Idempotent: an existing pinned attachment gets the new program atomically.
    pub fn ensure_pod_attached(&mut self, ifname: &str) -> Result<()> {
        self.ensure_attached(programs::FROM_POD, ifname, TcAttachType::Ingress, "in")?;
        self.ensure_attached(programs::TO_POD, ifname, TcAttachType::Egress, "out")
    }

    /// Attaches `from_uplink` to the node's uplink (ingress), in the calling thread's network namespace.
    /// Replies of flows that came in there are sent back out of it: `NodeConfig::uplink_ifindex` must name it.
    pub fn ensure_uplink_attached(&mut self, ifname: &str) -> Result<()> {
        self.ensure_attached(programs::FROM_UPLINK, ifname, TcAttachType::Ingress, "in")
    }

    /// Attaches `from_uplink` to the overlay's device (ingress): packets decapsulated there from other nodes' pods
    /// are forwarded to this node's pods like those arriving on the uplink (see `FwdConfig`).
    pub fn ensure_overlay_attached(&mut self, ifname: &str) -> Result<()> {
        self.ensure_attached(programs::FROM_UPLINK, ifname, TcAttachType::Ingress, "in")
    }

    /// The node's settings the datapath reads (its address for SNAT).
    pub fn set_node_config(&mut self, cfg: &trellis_ebpf_common::NodeConfig) -> Result<()> {
        self.set_config(trellis_ebpf_common::names::NODE_CONFIG, *cfg)
    }

    /// Which pod-to-pod packets the tc programs forward themselves (all zero: none).
    pub fn set_fwd_config(&mut self, cfg: &trellis_ebpf_common::FwdConfig) -> Result<()> {
        self.set_config(trellis_ebpf_common::names::FWD_CONFIG, *cfg)
    }

    /// Entry 0 of a one-entry array map.
    fn set_config<T: aya::Pod>(&mut self, name: &'static str, value: T) -> Result<()> {
        let err = |source| Error::Map { name, source };
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut arr: aya::maps::Array<&mut aya::maps::MapData, T> = aya::maps::Array::try_from(map).map_err(err)?;
        arr.set(0, value, 0).map_err(err)
    }

    /// Detaches from a pod's host veth (gone or going). A link that is not there is success.
    pub fn detach_pod(&mut self, ifname: &str) -> Result<()> {
        for dir in ["in", "out"] {
            let path = self.pins.link(ifname, dir);
            match PinnedLink::from_pin(&path) {
                // Unpinning drops our reference; the kernel detaches once no fd holds the link.
                Ok(link) => {
                    link.unpin().map_err(|source| Error::Io { what: "unpinning", path: path.clone(), source })?;
                }
                Err(aya::programs::links::LinkError::SyscallError(s)) if s.io_error.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(Error::Link { path, source }),
            }
        }
        Ok(())
    }

    /// Attaches the socket LB to a cgroup (v2): every connect(), sendmsg(), recvmsg() and getpeername() of a
    /// process in it or below it. One cgroup per node; its links are pinned as `links/cgroup/<program>`.
    /// (A bpf_link on a cgroup always allows several programs; the mode must be "single" for link_create.)
    /// Make-before-break on a restart: the new program is attached next to the pinned old one, then the old pin
    /// goes (which detaches it), so no connect() in between misses the load balancer; one that saw both programs
    /// was translated once (the second sees a backend, not a frontend).
    pub fn ensure_cgroup_attached(&mut self, cgroup: &Path) -> Result<()> {
        let dir = self.pins.path().join("links").join("cgroup");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { what: "creating", path: dir.clone(), source })?;
        let cg = std::fs::File::open(cgroup).map_err(|source| Error::Io {
            what: "opening cgroup",
            path: cgroup.into(),
            source,
        })?;
        for (name, _) in programs::SOCK {
            let prog = sock_addr(&mut self.ebpf, name)?;
            let perr = |source| Error::Program { name, source };
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(perr)?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(perr)?
                .try_into()
                .map_err(|source| Error::Link { path: dir.join(name), source })?;
            let (path, fresh) = (dir.join(name), dir.join(format!("{name}_new")));
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh).map_err(|source| Error::LinkPin { path: fresh.clone(), source })?;
            // rename(2) over the old pin drops the old link's last reference: the kernel detaches it.
            std::fs::rename(&fresh, &path).map_err(|source| Error::Io { what: "renaming", path, source })?;
        }
        Ok(())
    }

    /// Detaches the socket LB (the node's datapath is going away).
    pub fn detach_cgroup(&mut self) -> Result<()> {
        let dir = self.pins.path().join("links").join("cgroup");
        for (name, _) in programs::SOCK {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::Io { what: "unpinning", path, source: e });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn ensure_attached(&mut self, name: &'static str, ifname: &str, at: TcAttachType, dir: &str) -> Result<()> {
        let path = self.pins.link(ifname, dir);
        let prog = classifier(&mut self.ebpf, name)?;
        let perr = |source| Error::Program { name, source };
        let id = match PinnedLink::from_pin(&path) {
            Ok(old) => {
                let link = FdLink::from(old)
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| Error::Link { path: path.clone(), source: e })?;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    // The pinned link belongs to an interface that no longer exists (a pod's veth was
                    // recreated with the same name): start over.
                    Err(_) => {
                        let _ = std::fs::remove_file(&path);
                        prog.attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
                            .map_err(perr)?
                    }
                }
            }
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                prog.attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(perr)?
            }
        };
        let link = prog.take_link(id).map_err(perr)?;
        let fd: FdLink = link.try_into().map_err(|source| Error::Link { path: path.clone(), source })?;
        if !path.exists() {
            fd.pin(&path).map_err(|source| Error::LinkPin { path, source })?;
        }
        Ok(())
    }
}

fn sock_addr<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// An Ethernet frame carrying IPv4 (no options) and TCP with `flags` and one byte of payload, from
/// `src:sport` to `dst:dport`: the packet the cost measurements feed [`Datapath::test_run`].
pub fn tcp4_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20 + 1];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&41u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    p
}
