//! A small, strict HTTP/1.1 server side for Docker's plugin protocol: one `POST` with a
//! `Content-Length` body per connection, answered with `Connection: close`. The peer is
//! untrusted: the head and the body are bounded, the whole request must arrive before a
//! deadline, and anything else (chunked bodies, other methods, malformed lines) gets a 4xx.
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Request line and headers, CRLFs included.
pub const MAX_HEAD: usize = 8 * 1024;
/// Docker's plugin calls are small JSON objects; 1 MiB is far above any of them.
pub const MAX_BODY: usize = 1 << 20;
/// The whole request must arrive within this.
pub const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request was refused: the status to answer with and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// Read one request. `stream` should have a read timeout set (each `read` returns within it);
/// the overall [`DEADLINE`] is checked between reads.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(refuse(431, format!("request head over {MAX_HEAD} bytes")));
        }
        let n = read_some(stream, &mut chunk, started)?;
        if n == 0 {
            return Err(refuse(
                400,
                "connection closed before the end of the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(refuse(431, format!("request head over {MAX_HEAD} bytes")));
    }
    let mut body = buf.split_off(head_end + 4);
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| refuse(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(
            400,
            format!("malformed request line `{request_line}`"),
        ));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(refuse(505, format!("unsupported HTTP version `{version}`")));
    }
    if method != "POST" {
        return Err(refuse(
            405,
            format!("method {method} not allowed: plugin calls are POST"),
        ));
    }
    if !path.starts_with('/') || path.len() > 256 {
        return Err(refuse(
            400,
            "the request target must be a path of at most 256 bytes",
        ));
    }
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| refuse(400, format!("malformed header line `{line}`")))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(refuse(400, format!("malformed header name `{name}`")));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refuse(
                411,
                "Transfer-Encoding is not accepted: send Content-Length",
            ));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| refuse(400, format!("Content-Length `{value}` is not a number")))?;
            if length.replace(n).is_some_and(|old| old != n) {
                return Err(refuse(400, "conflicting Content-Length headers"));
            }
        }
    }
    let length = length.ok_or_else(|| refuse(411, "Content-Length is required"))?;
    if length > MAX_BODY {
        return Err(refuse(
            413,
            format!("body of {length} bytes is over {MAX_BODY}"),
        ));
    }
    if body.len() > length {
        return Err(refuse(
            400,
            "more bytes than Content-Length (pipelining is not supported)",
        ));
    }
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..want], started)?;
        if n == 0 {
            return Err(refuse(400, "connection closed before the end of the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request {
        path: path.to_string(),
        body,
    })
}

fn read_some(
    stream: &mut impl Read,
    chunk: &mut [u8],
    started: Instant,
) -> Result<usize, HttpError> {
    if started.elapsed() > DEADLINE {
        return Err(refuse(
            408,
            format!("request not complete within {DEADLINE:?}"),
        ));
    }
    loop {
        match stream.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(refuse(
                    408,
                    format!("request not complete within {DEADLINE:?}"),
                ));
            }
            Err(e) => return Err(refuse(400, format!("reading the request: {e}"))),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Write a response with a JSON body and close semantics.
pub fn write_response(stream: &mut impl Write, status: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &raw[..])
    }

    #[test]
    fn a_docker_call_parses() {
        let raw = b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\
                    Accept: application/vnd.docker.plugins.v1.2+json\r\n\r\n{}";
        let r = parse(raw).unwrap();
        assert_eq!(r.path, "/NetworkDriver.Join");
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn hostile_requests_get_a_status_not_a_panic() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"POST /x HTTP/1.1\r\n\r\n", 411),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                413,
            ),
            (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}", 400),
            (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n{}", 400),
            (b"POST /x HTTP/2\r\n\r\n", 505),
            (b"POST  /x HTTP/1.1\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\n\xff: 1\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nContent-", 400),
        ];
        for (raw, status) in cases {
            let e = parse(raw).unwrap_err();
            assert_eq!(
                e.status,
                *status,
                "{:?}: {}",
                String::from_utf8_lossy(raw),
                e.message
            );
        }
        let mut huge = b"POST /x HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        assert_eq!(parse(&huge).unwrap_err().status, 431);
    }

    #[test]
    fn response_shape() {
        let mut out = Vec::new();
        write_response(&mut out, 404, b"{\"Err\":\"x\"}").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(
            text.contains("Content-Length: 11\r\n") && text.ends_with("\r\n\r\n{\"Err\":\"x\"}")
        );
    }
}
