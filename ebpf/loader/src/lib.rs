//! Trellis' eBPF datapath as the agent sees it:
//! - [`OBJECT`]: the compiled programs (`ebpf/programs`, built by this crate's build.rs);
//! - [`Datapath`]: loads them with their maps pinned per node (a restarted agent adopts the maps and the
//!   attachments), and attaches them to a pod's host veth;
//! - [`tables`]: the Service maps behind one trait ([`tables::MapTable`]), with the kernel implementation, an
//!   in-memory fake and a fault-injecting wrapper (the latter two behind the `testing` feature).
//!
//! Map layouts are in `trellis-ebpf-common`; docs/CONTRACTS.md ("Map layout") describes them for readers.

mod datapath;
mod error;
mod sizes;
pub mod sync;
pub mod tables;

pub use datapath::{tcp4_frame, Datapath, PinDir};
pub use error::{Error, Result};
pub use sizes::{max_entries, MapSizes};
pub use trellis_ebpf_common as common;

/// The datapath object: ELF with BTF, every program and map of `ebpf/programs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trellis-datapath.o"));

/// Program names in [`OBJECT`].
pub mod programs {
    /// tc ingress of a pod's host veth (the pod's packets): Service DNAT, reverse NAT of replies it sends.
    pub const FROM_POD: &str = "from_pod";
    /// tc egress of a pod's host veth (packets to the pod): reverse NAT of replies.
    pub const TO_POD: &str = "to_pod";
    /// tc ingress of the node's uplink: NodePort / externalIPs / load-balancer IPs, replies of SNATed flows.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// Socket LB (cgroup sock_addr hooks), with their attach points.
    pub const SOCK: [(&str, aya::programs::CgroupSockAddrAttachType); 8] = {
        use aya::programs::CgroupSockAddrAttachType as T;
        [
            ("sock_connect4", T::Connect4),
            ("sock_connect6", T::Connect6),
            ("sock_sendmsg4", T::UDPSendMsg4),
            ("sock_sendmsg6", T::UDPSendMsg6),
            ("sock_recvmsg4", T::UDPRecvMsg4),
            ("sock_recvmsg6", T::UDPRecvMsg6),
            ("sock_getpeername4", T::GetPeerName4),
            ("sock_getpeername6", T::GetPeerName6),
        ]
    };
}
