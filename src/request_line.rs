//! Request lines as senders really write them: raw spaces and other bytes a URI must encode
//! are percent-encoded before hyper parses the request.
//!
//! Senders that build a postback URL by pasting values into it send, for example,
//! `GET /postback/affise?time=2024-01-01 07:30:00&sub2=z9 HTTP/1.1`, a raw `<clickid>` macro,
//! a raw `"` or a Latin-1 byte. hyper answers all of those with a bare 400 before the relay
//! sees them (nothing stored, nothing logged), and the `http` crate silently cuts a query at
//! a raw `#`. [`Lenient`] sits between the socket and hyper: in each request line whose
//! target holds such bytes it percent-encodes them (`' '` -> `%20`, `#` -> `%23`, a byte of
//! invalid UTF-8 -> `%XX`), which the form decoding turns back into the same values. The
//! method and the version (the line's last word, `HTTP/x.y`) are kept as they are; a line
//! whose last word is not a version is left for hyper to refuse.
//!
//! Only request lines change. To find them on a keep-alive connection the headers are read
//! for `Content-Length` and the body is passed on unread; a head with `Transfer-Encoding`,
//! an unreadable `Content-Length` or a line longer than [`LINE_LIMIT`] turns the connection
//! to plain pass-through (hyper then judges it as before).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request or header line looked at; a longer one is passed on unchanged and the
/// rest of the connection too (hyper refuses it with 414 or 431 anyway).
pub const LINE_LIMIT: usize = 64 * 1024;

/// Where the byte stream of a connection is.
#[derive(Debug)]
enum State {
    /// Collecting a request line (blank lines before it are passed on).
    Line,
    /// Passing header lines on, reading the framing ones.
    Head { length: Option<u64>, refuse: bool },
    /// Passing this many body bytes on.
    Body(u64),
    /// Passing everything on unchanged.
    Through,
}

/// The transformation of one connection's incoming bytes, fed in pieces of any size.
#[derive(Debug)]
pub struct Fixer {
    state: State,
    /// The part of the current line read so far (request line or header line).
    line: Vec<u8>,
}

impl Default for Fixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixer {
    pub fn new() -> Self {
        Self {
            state: State::Line,
            line: Vec::new(),
        }
    }

    /// Consumes `input`, appending what hyper should read to `out`. Bytes of an unfinished
    /// line are held until its end arrives.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Through => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Body(left) => {
                    let n = usize::try_from(*left).map_or(input.len(), |l| l.min(input.len()));
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Line;
                    }
                }
                State::Line | State::Head { .. } => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > LINE_LIMIT {
                            out.append(&mut self.line);
                            self.state = State::Through;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&input[..=end]);
                    input = &input[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(line, out);
                }
            }
        }
    }

    /// Passes on one whole line (with its `\n`) and moves to what follows it.
    fn line_done(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        if line.len() > LINE_LIMIT {
            out.extend_from_slice(&line);
            self.state = State::Through;
            return;
        }
        let text = trim_eol(&line);
        match &mut self.state {
            State::Line if text.is_empty() => out.extend_from_slice(&line),
            State::Line => {
                fix_request_line(text, out);
                out.extend_from_slice(&line[text.len()..]);
                self.state = State::Head {
                    length: None,
                    refuse: false,
                };
            }
            State::Head { length, refuse } if text.is_empty() => {
                out.extend_from_slice(&line);
                self.state = match (*refuse, *length) {
                    (true, _) => State::Through,
                    (false, Some(n)) if n > 0 => State::Body(n),
                    (false, _) => State::Line,
                };
            }
            State::Head { length, refuse } => {
                out.extend_from_slice(&line);
                let (name, value) = match text.iter().position(|&b| b == b':') {
                    Some(i) => (&text[..i], text[i + 1..].trim_ascii()),
                    None => (text, &b""[..]),
                };
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    *refuse = true;
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    let n = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    match (n, *length) {
                        (Some(n), None) => *length = Some(n),
                        (Some(n), Some(seen)) if n == seen => {}
                        _ => *refuse = true,
                    }
                }
            }
            State::Body(_) | State::Through => out.extend_from_slice(&line),
        }
    }
}

/// `line` without its line ending (`\n` or `\r\n`).
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Writes the request line `line` (no line ending) with the bytes of its target that a URI
/// must not hold percent-encoded; unchanged when it holds none, or when its last word is not
/// an HTTP version.
fn fix_request_line(line: &[u8], out: &mut Vec<u8>) {
    let (Some(first), Some(last)) = (
        line.iter().position(|&b| b == b' '),
        line.iter().rposition(|&b| b == b' '),
    ) else {
        out.extend_from_slice(line);
        return;
    };
    let target = &line[first + 1..last];
    let utf8 = std::str::from_utf8(target).is_ok();
    let needs = |b: u8| match b {
        // What hyper's URI parser refuses in a query (and `#`, which it takes for a fragment).
        b'#' | b'"' | b'<' | b'>' | 0x7F => true,
        0..=0x20 => true,
        0x80..=0xFF => !utf8,
        _ => false,
    };
    if first == last || !line[last + 1..].starts_with(b"HTTP/") || !target.iter().any(|&b| needs(b))
    {
        out.extend_from_slice(line);
        return;
    }
    out.extend_from_slice(&line[..=first]);
    for &b in target {
        if needs(b) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&line[last..]);
}

/// A connection whose incoming request lines pass through a [`Fixer`]; writes go straight
/// to the socket.
#[derive(Debug)]
pub struct Lenient<S> {
    inner: S,
    fixer: Fixer,
    /// Fixed, not yet handed to hyper; `served` bytes of it already were.
    ready: Vec<u8>,
    served: usize,
}

/// Most bytes one read takes from the socket.
const READ_SIZE: usize = 8 * 1024;

/// A `ready` buffer larger than this after a big body is given back when it empties, so an
/// idle keep-alive connection holds no more than a request's worth.
const KEEP_CAPACITY: usize = 4 * 1024;

thread_local! {
    /// Where a read lands before it is fixed: one per thread, not one per connection (a
    /// read and its fixing happen within one `poll_read`, with no await between them).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

impl<S> Lenient<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fixer: Fixer::new(),
            ready: Vec::new(),
            served: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lenient<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.served < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.served);
                buf.put_slice(&this.ready[this.served..this.served + n]);
                this.served += n;
                if this.served == this.ready.len() {
                    this.ready.clear();
                    this.ready.shrink_to(KEEP_CAPACITY);
                    this.served = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let mut raw = ReadBuf::new(scratch);
                let polled = Pin::new(&mut this.inner).poll_read(cx, &mut raw);
                if let Poll::Ready(Ok(())) = polled {
                    this.fixer.feed(raw.filled(), &mut this.ready);
                    return Poll::Ready(Ok(raw.filled().is_empty()));
                }
                polled.map_ok(|()| false)
            });
            match read {
                // End of stream: an unfinished line is passed on for hyper to judge.
                Poll::Ready(Ok(true)) => {
                    this.ready.append(&mut this.fixer.line);
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(false)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lenient<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fix(input: &[u8]) -> Vec<u8> {
        let mut f = Fixer::new();
        let mut out = Vec::new();
        f.feed(input, &mut out);
        out.extend_from_slice(&f.line);
        out
    }

    #[test]
    fn raw_spaces_in_the_target_are_encoded() {
        assert_eq!(
            fix(b"GET /postback/affise?time=2024-01-01 07:30:00&sub2=z9 HTTP/1.1\r\nHost: x\r\n\r\n"),
            b"GET /postback/affise?time=2024-01-01%2007:30:00&sub2=z9 HTTP/1.1\r\nHost: x\r\n\r\n"
        );
    }

    #[test]
    fn bytes_a_uri_must_not_hold_are_encoded() {
        assert_eq!(
            fix(b"GET /p/s?c=<clickid>&q=\"a\"&o=#1001&t=\ta HTTP/1.1\r\n\r\n"),
            b"GET /p/s?c=%3Cclickid%3E&q=%22a%22&o=%231001&t=%09a HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn utf8_stays_and_invalid_utf8_is_encoded() {
        assert_eq!(
            fix("GET /p/s?n=caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes()),
            "GET /p/s?n=caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes()
        );
        assert_eq!(
            fix(b"GET /p/s?n=caf\xe9 HTTP/1.1\r\n\r\n"),
            b"GET /p/s?n=caf%E9 HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn a_line_without_a_version_is_left_alone() {
        let line = b"GET /p/s?a=b c\r\n\r\n";
        assert_eq!(fix(line), line);
    }

    #[test]
    fn headers_and_bodies_are_never_changed() {
        let input = b"POST /p/s?a=b c HTTP/1.1\r\nContent-Length: 19\r\nUser-Agent: a b <c>\r\n\r\nGET /x?y z HTTP/1.1\r\nGET /p/s?d e HTTP/1.1\r\n\r\n";
        assert_eq!(
            fix(input),
            b"POST /p/s?a=b%20c HTTP/1.1\r\nContent-Length: 19\r\nUser-Agent: a b <c>\r\n\r\nGET /x?y z HTTP/1.1\r\nGET /p/s?d%20e HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn chunked_or_unclear_framing_turns_to_pass_through() {
        for head in [
            &b"Transfer-Encoding: chunked\r\n"[..],
            b"Content-Length: x\r\n",
            b"Content-Length: 1\r\nContent-Length: 2\r\n",
        ] {
            let mut input = b"POST /p/s HTTP/1.1\r\n".to_vec();
            input.extend_from_slice(head);
            input.extend_from_slice(b"\r\nGET /p/s?a b HTTP/1.1\r\n\r\n");
            assert_eq!(fix(&input), input, "{}", String::from_utf8_lossy(head));
        }
    }

    proptest! {
        /// Any split of the stream gives the same bytes as the whole stream at once.
        #[test]
        fn pieces_of_any_size_give_the_same_bytes(
            reqs in proptest::collection::vec(("[ -~]{0,40}", 0usize..30), 1..5),
            cuts in proptest::collection::vec(1usize..17, 1..40),
        ) {
            let mut input = Vec::new();
            for (query, body) in &reqs {
                input.extend_from_slice(format!("POST /p/s?{query} HTTP/1.1\r\nContent-Length: {body}\r\n\r\n").as_bytes());
                input.extend(std::iter::repeat_n(b'x', *body));
            }
            let whole = fix(&input);
            let mut f = Fixer::new();
            let mut out = Vec::new();
            let mut rest = &input[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                f.feed(&rest[..n], &mut out);
                rest = &rest[n..];
            }
            out.extend_from_slice(&f.line);
            prop_assert_eq!(out, whole);
        }

        /// A request line hyper accepts is passed on byte for byte.
        #[test]
        fn valid_request_lines_are_unchanged(path in "/[a-z0-9/_.-]{0,20}", query in "[a-zA-Z0-9=&%+._~{}$!*(),;:@/?|^`'\\\\\\[\\]-]{0,60}") {
            let input = format!("GET {path}?{query} HTTP/1.1\r\nHost: h\r\n\r\n");
            prop_assert_eq!(fix(input.as_bytes()), input.as_bytes());
        }
    }
}
