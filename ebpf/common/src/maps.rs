//! Keys, values and names of the Service load-balancing maps (in the spirit of Cilium's lb4/lb6 maps).

/// An IPv4 address in network byte order.
pub type V4 = [u8; 4];
/// An IPv6 address in network byte order.
pub type V6 = [u8; 16];

/// Map names, one per family. Pinned under the node's directory (`/sys/fs/bpf/trellis/<node>/<NAME>`).
pub mod names {
    pub const LB4_SERVICES: &str = "LB4_SVC_V1";
    pub const LB6_SERVICES: &str = "LB6_SVC_V1";
    pub const LB4_BACKENDS: &str = "LB4_BE_V1";
    pub const LB6_BACKENDS: &str = "LB6_BE_V1";
    pub const LB4_REV_NAT: &str = "LB4_RNAT_V1";
    pub const LB6_REV_NAT: &str = "LB6_RNAT_V1";
    pub const LB4_AFFINITY: &str = "LB4_AFF_V1";
    pub const LB6_AFFINITY: &str = "LB6_AFF_V1";
    pub const CT4: &str = "CT4_V1";
    pub const CT6: &str = "CT6_V1";
    pub const SK_RNAT4: &str = "LB4_SKRNAT_V1";
    pub const SK_RNAT6: &str = "LB6_SKRNAT_V1";
    pub const SK_FWD4: &str = "LB4_SKFWD_V1";
    pub const SK_FWD6: &str = "LB6_SKFWD_V1";
    pub const COUNTERS: &str = "TR_COUNTERS_V1";
    pub const NODE_CONFIG: &str = "TR_NODE_CFG_V1";
    pub const FWD_CONFIG: &str = "TR_FWD_CFG_V1";
    pub const POD_MACS: &str = "TR_POD_MAC_V1";
    /// Every map the agent pins and adopts, in creation order.
    pub const ALL: [&str; 18] = [
        LB4_SERVICES,
        LB6_SERVICES,
        LB4_BACKENDS,
        LB6_BACKENDS,
        LB4_REV_NAT,
        LB6_REV_NAT,
        LB4_AFFINITY,
        LB6_AFFINITY,
        CT4,
        CT6,
        SK_RNAT4,
        SK_RNAT6,
        SK_FWD4,
        SK_FWD6,
        COUNTERS,
        NODE_CONFIG,
        FWD_CONFIG,
        POD_MACS,
    ];
}

/// The maps' default sizes, compiled into the object; the agent's loader (`MapSizes`) sets the ones the operator
/// chose. Frontends and backends fit a cluster of a few thousand Services; conntrack, affinity and sockets are
/// LRU, so they never fill up: they forget the oldest entries.
pub mod capacity {
    pub const SERVICES: u32 = 1 << 16;
    pub const BACKENDS: u32 = 1 << 16;
    pub const REV_NAT: u32 = 1 << 16;
    pub const AFFINITY: u32 = 1 << 16;
    pub const CONNTRACK: u32 = 1 << 18;
    /// Sockets translated by the socket-level load balancer (LRU: a closed socket's entries age out).
    pub const SOCKETS: u32 = 1 << 17;
    /// Pods of this node by MAC (LRU: learned from their packets, so a gone pod's entry ages out).
    pub const POD_MACS: u32 = 1 << 14;
    /// Fragmented datagrams in flight (LRU, not pinned): the ports their first fragment carried.
    pub const FRAGMENTS: u32 = 1 << 13;
}

/// Lookup scope of a frontend entry. Every frontend has an `EXTERNAL` entry; a frontend whose external and
/// internal backend sets differ (`externalTrafficPolicy: Local` on a NodePort, say) carries
/// [`svc_flags::TWO_SCOPES`] and also has an `INTERNAL` entry, used for clients inside the node.
pub mod scope {
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

/// Frontend (slot 0) flags.
pub mod svc_flags {
    /// A ClusterIP frontend.
    pub const CLUSTER_IP: u16 = 1 << 0;
    /// A NodePort frontend (a node address and the node port).
    pub const NODE_PORT: u16 = 1 << 1;
    /// An `externalIPs` frontend.
    pub const EXTERNAL_IP: u16 = 1 << 2;
    /// A `status.loadBalancer.ingress` frontend.
    pub const LOAD_BALANCER: u16 = 1 << 3;
    /// `externalTrafficPolicy: Local`: only local backends, the client's address is kept (no SNAT).
    pub const ETP_LOCAL: u16 = 1 << 4;
    /// `internalTrafficPolicy: Local`.
    pub const ITP_LOCAL: u16 = 1 << 5;
    /// `sessionAffinity: ClientIP`: the slot-0 entry's `affinity_timeout` holds `timeoutSeconds`.
    pub const AFFINITY: u16 = 1 << 6;
    /// The frontend also has an `INTERNAL`-scope entry.
    pub const TWO_SCOPES: u16 = 1 << 7;
}

/// Backend flags.
pub mod backend_flags {
    /// The backend is a pod of this node: no SNAT is needed to reach it from the uplink.
    pub const LOCAL: u8 = 1 << 0;
    /// Serving but terminating (used only when no ready backend is left).
    pub const TERMINATING: u8 = 1 << 1;
}

/// The source a pod sees when it reaches itself through a Service (link-local, never a real peer; the value
/// Cilium uses too, so operators recognise it).
pub const HAIRPIN4: V4 = [169, 254, 42, 1];
/// IPv6 counterpart of [`HAIRPIN4`] (a unique-local address reserved for this).
pub const HAIRPIN6: V6 = [0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0x2a, 0x01];

/// Key of the services map: a frontend and a slot. Slot 0 describes the frontend (backend count, flags); slots
/// 1..=count name its backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbKey<A> {
    /// Frontend address, network byte order.
    pub address: A,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// 0 = the frontend itself; 1..=count = its backends.
    pub backend_slot: u16,
    pub proto: u8,
    /// [`scope`]
    pub scope: u8,
    pub _pad: [u8; 2],
}
pub type Lb4Key = LbKey<V4>;
pub type Lb6Key = LbKey<V6>;

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbService {
    /// Slots 1..: the backend's id in the backends map. Slot 0: 0.
    pub backend_id: u32,
    /// Slot 0 with [`svc_flags::AFFINITY`]: `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout: u32,
    /// Id of the frontend in the reverse-NAT map (also the frontend's identity in conntrack and affinity).
    pub rev_nat_id: u32,
    /// Slot 0: number of backend slots (0 = a Service with no usable endpoint: reject).
    pub count: u16,
    /// Slot 0: [`svc_flags`].
    pub flags: u16,
}

/// Value of the backends map (key: `BackendId`, a `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbBackend<A> {
    /// Pod address, network byte order.
    pub address: A,
    /// Target port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// [`backend_flags`]
    pub flags: u8,
}
pub type Lb4Backend = LbBackend<V4>;
pub type Lb6Backend = LbBackend<V6>;

/// Value of the reverse-NAT map (key: `rev_nat_id`, a `u32`): the frontend a reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNat<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
}
pub type RevNat4 = RevNat<V4>;
pub type RevNat6 = RevNat<V6>;

/// Key of the affinity map (LRU): a client and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityKey<A> {
    pub client: A,
    pub rev_nat_id: u32,
}
pub type Affinity4Key = AffinityKey<V4>;
pub type Affinity6Key = AffinityKey<V6>;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Seconds of `bpf_ktime_get_coarse_ns` (monotonic) at last use.
    pub last_used: u32,
}

/// Direction of a conntrack entry.
pub mod ct_dir {
    /// Keyed by the client's original tuple (client -> frontend): holds the chosen backend.
    pub const SERVICE: u8 = 0;
    /// Keyed by the reply's tuple (backend -> client, or backend -> node for SNAT): holds what to undo.
    pub const REPLY: u8 = 1;
}

/// Conntrack flags.
pub mod ct_flags {
    /// The flow was source-NATed to the node (NodePort/externalIP to a remote backend, eTP Cluster).
    pub const SNAT: u16 = 1 << 0;
    /// A FIN or RST was seen: the entry may go early.
    pub const CLOSING: u16 = 1 << 1;
    /// REPLY of a flow that came in on the uplink: replies leave through the uplink directly (their source is
    /// then a node address, which the kernel's forwarding would drop as a martian).
    pub const UPLINK: u16 = 1 << 2;
    /// A pod reaching itself through a frontend: its source is rewritten to [`super::HAIRPIN4`] /
    /// [`super::HAIRPIN6`] (a packet from its own address would be dropped by its kernel) and both directions are
    /// sent straight back into the pod.
    pub const HAIRPIN: u16 = 1 << 3;
}

/// Key of the conntrack map (LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey<A> {
    pub saddr: A,
    pub daddr: A,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    /// [`ct_dir`]
    pub dir: u8,
    pub _pad: [u8; 2],
}
pub type Ct4Key = CtKey<V4>;
pub type Ct6Key = CtKey<V6>;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtEntry<A> {
    /// The backend chosen for the flow (SERVICE direction); checked against the backends map on every use, so a
    /// deleted backend is never used again even before the agent purges the entry.
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// Seconds of `bpf_ktime_get_coarse_ns` at last use.
    pub last_seen: u32,
    /// [`ct_flags`]
    pub flags: u16,
    /// REPLY with [`ct_flags::SNAT`]: the client's original port (network byte order).
    pub nat_port: u16,
    /// REPLY with [`ct_flags::SNAT`]: the client's original address.
    pub nat_addr: A,
}
pub type Ct4Entry = CtEntry<V4>;
pub type Ct6Entry = CtEntry<V6>;

/// Key of the socket-level maps: a socket (its cookie) and an address it talks to. `SK_RNAT`: the backend it was
/// connected to -> the frontend it asked for (what recvmsg and getpeername show). `SK_FWD`: the frontend -> the
/// backend chosen for it (a UDP socket's datagrams to one frontend stay on one backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockKey<A> {
    pub address: A,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    /// The socket cookie, as two halves so the key has no padding whatever the address size.
    pub cookie_lo: u32,
    pub cookie_hi: u32,
}
pub type Sock4Key = SockKey<V4>;
pub type Sock6Key = SockKey<V6>;

/// The node's own settings, one entry (index 0) of an array map, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's address used as the source for SNAT (network byte order).
    pub node_ip4: V4,
    pub node_ip6: V6,
    /// ifindex of the uplink (NodePort traffic arrives here).
    pub uplink_ifindex: u32,
    pub flags: u32,
}

/// Forwarding in eBPF between pods (see `FwdConfig`): which families are on.
pub mod fwd_flags {
    pub const V4: u32 = 1;
    pub const V6: u32 = 2;
}

/// Which packets the tc programs forward themselves (FIB lookup and redirect) instead of handing them to the
/// node's IP stack: pod to pod across nodes, clusterCIDR to clusterCIDR, the traffic the CNI conflist already
/// leaves untracked. From a pod: to a pod of another node (in `cluster`, not in `local`); on the uplink: from a
/// pod of another node to one of this node (`local`). Anything else (pod to outside, which is masqueraded; node
/// traffic; a packet the FIB cannot place) takes the stack as before. One entry (index 0), written by the agent;
/// all zero means off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdConfig {
    /// `fwd_flags`.
    pub flags: u32,
    pub _pad: u32,
    pub cluster4: Prefix<V4>,
    pub local4: Prefix<V4>,
    pub cluster6: Prefix<V6>,
    pub local6: Prefix<V6>,
}

/// Key of the pod-MAC map: a pod's MAC (as in the Ethernet header), padded to 8 bytes. Value: the ifindex of the
/// pod's host veth, learned by `from_pod` from the packets it forwards.
pub type MacKey = [u8; 8];

/// An address prefix as network and mask, both in network byte order. The default (mask all zero) contains
/// nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix<A> {
    pub net: A,
    pub mask: A,
}

impl<A: Default> Default for Prefix<A> {
    /// Contains nothing (see [`Prefix::contains`]).
    fn default() -> Self {
        Prefix { net: A::default(), mask: A::default() }
    }
}

impl<const N: usize> Prefix<[u8; N]> {
    /// The prefix `addr/len` (host bits of `addr` cleared; `len` past the address size is the whole address).
    pub fn new(addr: [u8; N], len: u8) -> Self {
        let mut mask = [0u8; N];
        let mut net = [0u8; N];
        let mut i = 0;
        while i < N {
            let bits = (len as usize).saturating_sub(i * 8).min(8) as u32;
            mask[i] = if bits == 0 { 0 } else { (0xffu16 << (8 - bits)) as u8 };
            net[i] = addr[i] & mask[i];
            i += 1;
        }
        Prefix { net, mask }
    }
}

// `contains` works on whole words: a byte-wise loop is compiled into a branch per byte, and the BPF verifier then
// walks 2^16 paths for an IPv6 prefix.
impl Prefix<V4> {
    /// Whether `addr` lies in the prefix. The all-zero prefix (mask 0, the default) contains nothing: an unset
    /// entry must not turn into "everything".
    #[inline(always)]
    pub fn contains(&self, addr: &V4) -> bool {
        let m = u32::from_ne_bytes(self.mask);
        m != 0 && u32::from_ne_bytes(*addr) & m == u32::from_ne_bytes(self.net)
    }
}

impl Prefix<V6> {
    /// As for IPv4.
    #[inline(always)]
    pub fn contains(&self, addr: &V6) -> bool {
        let w = |a: &V6, i: usize| {
            u64::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]])
        };
        let (m0, m1) = (w(&self.mask, 0), w(&self.mask, 8));
        let diff = (w(addr, 0) & m0 ^ w(&self.net, 0)) | (w(addr, 8) & m1 ^ w(&self.net, 8));
        (m0 | m1) != 0 && diff == 0
    }
}

/// Per-CPU counters: index into the counters array.
pub mod counter {
    pub const PACKETS: u32 = 0;
    pub const BYTES: u32 = 1;
    pub const TRANSLATED: u32 = 2;
    pub const REV_TRANSLATED: u32 = 3;
    pub const CT_NEW: u32 = 4;
    pub const CT_HIT: u32 = 5;
    pub const REJECT_NO_BACKEND: u32 = 6;
    pub const DROP_NO_LOCAL_BACKEND: u32 = 7;
    pub const DROP_MALFORMED: u32 = 8;
    pub const DROP_CT_FULL: u32 = 9;
    pub const DROP_REWRITE: u32 = 10;
    pub const SOCK_TRANSLATED: u32 = 11;
    pub const SOCK_REJECT: u32 = 12;
    /// Packets the tc programs forwarded themselves (FIB lookup and redirect, the node's IP stack skipped).
    pub const FORWARDED: u32 = 13;
    /// Of those, packets from the uplink put straight into a pod (`bpf_redirect_peer`, the bridge skipped too).
    pub const DELIVERED: u32 = 14;
    /// Number of counters (the array's size).
    pub const COUNT: u32 = 16;
    /// Names as the agent exports them (`trellis_datapath_<name>_total`).
    pub const NAMES: [&str; 15] = [
        "packets",
        "bytes",
        "translated",
        "rev_translated",
        "ct_new",
        "ct_hit",
        "reject_no_backend",
        "drop_no_local_backend",
        "drop_malformed",
        "drop_ct_full",
        "drop_rewrite",
        "sock_translated",
        "sock_reject",
        "forwarded",
        "delivered",
    ];
}

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(Lb4Key, 12);
assert_size!(Lb6Key, 24);
assert_size!(LbService, 16);
assert_size!(Lb4Backend, 8);
assert_size!(Lb6Backend, 20);
assert_size!(RevNat4, 8);
assert_size!(RevNat6, 20);
assert_size!(Affinity4Key, 8);
assert_size!(Affinity6Key, 20);
assert_size!(AffinityValue, 8);
assert_size!(Ct4Key, 16);
assert_size!(Ct6Key, 40);
assert_size!(Ct4Entry, 20);
assert_size!(Ct6Entry, 32);
assert_size!(NodeConfig, 28);
assert_size!(FwdConfig, 88);
assert_size!(Sock4Key, 16);
assert_size!(Sock6Key, 28);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], Copy, made only of integers and byte arrays, with no implicit padding
    // (the size assertions above prove it), so any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for Lb6Key {}
    unsafe impl aya::Pod for LbService {}
    unsafe impl aya::Pod for Lb4Backend {}
    unsafe impl aya::Pod for Lb6Backend {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for RevNat6 {}
    unsafe impl aya::Pod for Affinity4Key {}
    unsafe impl aya::Pod for Affinity6Key {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct4Entry {}
    unsafe impl aya::Pod for Ct6Entry {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for FwdConfig {}
    unsafe impl aya::Pod for Sock4Key {}
    unsafe impl aya::Pod for Sock6Key {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn key_field_offsets() {
        assert_eq!(offset_of!(Lb4Key, dport), 4);
        assert_eq!(offset_of!(Lb4Key, backend_slot), 6);
        assert_eq!(offset_of!(Lb4Key, proto), 8);
        assert_eq!(offset_of!(Lb4Key, scope), 9);
        assert_eq!(offset_of!(Lb6Key, dport), 16);
        assert_eq!(offset_of!(Lb6Key, scope), 21);
        assert_eq!(offset_of!(Ct4Key, daddr), 4);
        assert_eq!(offset_of!(Ct4Key, sport), 8);
        assert_eq!(offset_of!(Ct4Key, proto), 12);
        assert_eq!(offset_of!(Ct6Key, sport), 32);
        assert_eq!(offset_of!(Ct6Key, dir), 37);
    }

    #[test]
    fn value_field_offsets() {
        assert_eq!(offset_of!(LbService, affinity_timeout), 4);
        assert_eq!(offset_of!(LbService, rev_nat_id), 8);
        assert_eq!(offset_of!(LbService, count), 12);
        assert_eq!(offset_of!(LbService, flags), 14);
        assert_eq!(offset_of!(Lb6Backend, port), 16);
        assert_eq!(offset_of!(Ct4Entry, flags), 12);
        assert_eq!(offset_of!(Ct4Entry, nat_addr), 16);
        assert_eq!(offset_of!(Ct6Entry, nat_addr), 16);
        assert_eq!(offset_of!(NodeConfig, uplink_ifindex), 20);
    }

    #[test]
    fn prefixes_contain_their_addresses_and_the_unset_one_contains_nothing() {
        let p = Prefix::new([10, 244, 7, 9], 16);
        assert_eq!(p, Prefix { net: [10, 244, 0, 0], mask: [255, 255, 0, 0] });
        assert!(p.contains(&[10, 244, 0, 0]) && p.contains(&[10, 244, 255, 255]));
        assert!(!p.contains(&[10, 245, 0, 1]) && !p.contains(&[11, 244, 0, 1]));
        let odd = Prefix::new([10, 244, 1, 130], 25);
        assert_eq!(odd.mask, [255, 255, 255, 128]);
        assert!(odd.contains(&[10, 244, 1, 255]) && !odd.contains(&[10, 244, 1, 127]));
        assert_eq!(Prefix::new([10, 1, 2, 3], 32).net, [10, 1, 2, 3]);
        assert_eq!(Prefix::new([10, 1, 2, 3], 200).mask, [255; 4], "a length past the address is all of it");
        assert!(Prefix::new([10, 1, 2, 3], 0).mask == [0; 4] && !Prefix::new([10, 1, 2, 3], 0).contains(&[0; 4]));
        assert!(!Prefix::<V4>::default().contains(&[0; 4]), "unset must not mean everything");
        let mut a6 = [0u8; 16];
        a6[..4].copy_from_slice(&[0xfd, 0, 0x10, 0x44]);
        let p6 = Prefix::new(a6, 56);
        let mut inside = a6;
        inside[7] = 0xff;
        inside[15] = 1;
        let mut outside = a6;
        outside[5] = 1;
        assert!(p6.contains(&inside) && !p6.contains(&outside));
        assert!(!Prefix::<V6>::default().contains(&[0; 16]));
    }

    #[test]
    fn names_fit_the_kernel_and_are_unique() {
        for (i, n) in names::ALL.iter().enumerate() {
            assert!(n.len() <= 15, "{n} is longer than BPF_OBJ_NAME_LEN - 1");
            assert!(n.ends_with("_V1"), "{n} carries no layout version");
            assert!(!names::ALL[..i].contains(n), "{n} twice");
        }
        assert_eq!(counter::NAMES.len() as u32, counter::DELIVERED + 1);
        assert!(counter::NAMES.len() as u32 <= counter::COUNT);
    }
}
