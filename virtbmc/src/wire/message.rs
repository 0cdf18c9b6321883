//! IPMI LAN messages (IPMI 2.0 §13.8): the bytes inside a session wrapper.
//!
//! Request: rsAddr, netFn/rsLUN, checksum 1, rqAddr, rqSeq/rqLUN, cmd, data, checksum 2.
//! Response: rqAddr, netFn/rqLUN, checksum 1, rsAddr, rqSeq/rsLUN, cmd, completion code,
//! data, checksum 2. Checksums are two's complement: the covered bytes sum to zero.

use super::WireError;

/// Shortest legal request: six header bytes and the trailing checksum.
pub const MIN_REQUEST_LEN: usize = 7;

pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub rs_addr: u8,
    pub net_fn: u8,
    pub rs_lun: u8,
    pub rq_addr: u8,
    pub rq_seq: u8,
    pub rq_lun: u8,
    pub cmd: u8,
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < MIN_REQUEST_LEN {
            return Err(WireError::Truncated);
        }
        if checksum(&buf[..2]) != buf[2] || checksum(&buf[3..buf.len() - 1]) != buf[buf.len() - 1] {
            return Err(WireError::Checksum);
        }
        Ok(Request {
            rs_addr: buf[0],
            net_fn: buf[1] >> 2,
            rs_lun: buf[1] & 3,
            rq_addr: buf[3],
            rq_seq: buf[4] >> 2,
            rq_lun: buf[4] & 3,
            cmd: buf[5],
            data: &buf[6..buf.len() - 1],
        })
    }

    /// Encodes a request (used by tests and the benchmark client).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[self.rs_addr, self.net_fn << 2 | self.rs_lun]);
        out.push(checksum(&out[start..]));
        let body = out.len();
        out.extend_from_slice(&[self.rq_addr, self.rq_seq << 2 | self.rq_lun, self.cmd]);
        out.extend_from_slice(self.data);
        out.push(checksum(&out[body..]));
    }

    /// Encodes the response to this request with completion code `cc` and `data`.
    pub fn emit_response(&self, cc: u8, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[self.rq_addr, (self.net_fn | 1) << 2 | self.rq_lun]);
        out.push(checksum(&out[start..]));
        let body = out.len();
        out.extend_from_slice(&[self.rs_addr, self.rq_seq << 2 | self.rs_lun, self.cmd, cc]);
        out.extend_from_slice(data);
        out.push(checksum(&out[body..]));
    }
}

/// A parsed response (used by tests and the benchmark client, which play the console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub net_fn: u8,
    pub rq_seq: u8,
    pub cmd: u8,
    pub cc: u8,
    pub data: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < MIN_REQUEST_LEN + 1 {
            return Err(WireError::Truncated);
        }
        if checksum(&buf[..2]) != buf[2] || checksum(&buf[3..buf.len() - 1]) != buf[buf.len() - 1] {
            return Err(WireError::Checksum);
        }
        Ok(Response {
            net_fn: buf[1] >> 2,
            rq_seq: buf[4] >> 2,
            cmd: buf[5],
            cc: buf[6],
            data: &buf[7..buf.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_auth_caps_request() {
        // ipmitool -I lan: Get Channel Authentication Capabilities, rqSeq 1, data 0e 04.
        let raw = [0x20, 0x18, 0xc8, 0x81, 0x04, 0x38, 0x0e, 0x04, 0x31];
        let req = Request::parse(&raw).unwrap();
        assert_eq!(
            (req.net_fn, req.cmd, req.rq_seq, req.data),
            (0x06, 0x38, 1, &[0x0e, 0x04][..])
        );
        let mut again = Vec::new();
        req.emit(&mut again);
        assert_eq!(again, raw);
    }

    #[test]
    fn rejects_bad_checksums_and_short_messages() {
        assert_eq!(
            Request::parse(&[0x20, 0x18, 0xc8, 0x81, 0x04, 0x38, 0x0e, 0x04, 0x30]),
            Err(WireError::Checksum)
        );
        assert_eq!(
            Request::parse(&[0x20, 0x18, 0xc9, 0x81, 0x04, 0x38, 0x43]),
            Err(WireError::Checksum)
        );
        assert_eq!(Request::parse(&[0x20, 0x18]), Err(WireError::Truncated));
    }

    #[test]
    fn response_round_trips() {
        let req = Request {
            rs_addr: 0x20,
            net_fn: 0,
            rs_lun: 0,
            rq_addr: 0x81,
            rq_seq: 9,
            rq_lun: 0,
            cmd: 1,
            data: &[],
        };
        let mut out = Vec::new();
        req.emit_response(0, &[1, 0, 0], &mut out);
        let rsp = Response::parse(&out).unwrap();
        assert_eq!(
            (rsp.net_fn, rsp.rq_seq, rsp.cmd, rsp.cc, rsp.data),
            (1, 9, 1, 0, &[1, 0, 0][..])
        );
    }
}
