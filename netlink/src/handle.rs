//! The rtnetlink socket and its request plumbing. The typed verbs live beside it, one module per kind of object,
//! as rtnetlink splits them: `link`, `addr`, `route`, `neigh` (neighbours and the bridge FDB). Each adds its own
//! `impl Handle` block; a new object (tc, say) is a new module of the same shape.
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::netns;

/// One rtnetlink socket, bound to the network namespace it was opened in.
pub struct Handle {
    sock: Socket,
    seq: u32,
}

impl Handle {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Handle> {
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::Io { what, source: e }
        };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io("opening rtnetlink socket"))?;
        sock.bind_auto().map_err(io("binding rtnetlink socket"))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io("connecting rtnetlink socket"))?;
        // Extended acks give the kernel's own words for a refused request.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Handle { sock, seq: 1 })
    }

    /// A socket inside the network namespace at `path`; the caller's thread never changes namespace.
    pub fn in_netns(path: &Path) -> Result<Handle> {
        netns::run_in(path, Handle::new)?
    }

    /// Same as [`Handle::in_netns`] with an opened namespace file.
    pub fn in_netns_fd(fd: &std::os::fd::OwnedFd, path: &Path) -> Result<Handle> {
        netns::run_in_fd(fd, path, Handle::new)?
    }

    pub fn raw_fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Sends one request and collects every reply message until the ACK (or DONE for dumps).
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| Error::Io { what: format!("sending {op}"), source: e })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) =
                self.sock.recv_from_full().map_err(|e| Error::Io { what: format!("receiving {op}"), source: e })?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| Error::Decode { op: op.to_string(), detail: e.to_string() })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode { op: op.to_string(), detail: "zero-length message".into() });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue; // a stale reply to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            let errno = -code.get();
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno,
                                source: std::io::Error::from_raw_os_error(errno),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<()> {
        self.request(msg, flags | NLM_F_ACK, op).map(|_| ())
    }
}

/// Acknowledged-request outcomes the `ensure_*` / `del_*` verbs accept as success.
pub(crate) fn ok_if_exists(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_exists() => Ok(()),
        r => r,
    }
}

pub(crate) fn ok_if_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

pub(crate) fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}
