//! The MLLP listener: TCP (TLS optional), frames `0x0B message 0x1C 0x0D`, many messages per
//! connection (each answered in order), many connections (up to a limit), an idle time-out and a
//! maximum message size. Bytes outside a frame are skipped; a frame that never ends is dropped
//! when the next one starts, the peer closes, or the idle time-out fires; nothing wedges it.

use super::Apply;
use super::config::Config;
use super::mapping::{self, Refusal};
use crate::er7::{Charset, Message, Separators};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

pub const START: u8 = 0x0B;
pub const END: [u8; 2] = [0x1C, 0x0D];

/// Serves MLLP on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    apply: Arc<dyn Apply>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "mllp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (config, apply, tls) = (config.clone(), apply.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let peer = peer.to_string();
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        Duration::from_secs(config.idle_timeout_secs.max(1)),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(s)) => connection(s, &peer, &config, &apply).await,
                        _ => tracing::info!(peer, "mllp TLS handshake failed"),
                    }
                }
                None => connection(stream, &peer, &config, &apply).await,
            }
        });
    }
}

/// Where the reader is in the byte stream. (Frames that end are answered in the order they
/// ended; a start block inside a frame ends it, unanswered if it was within the limit.)
enum State {
    /// Outside a frame: bytes up to the next start block are skipped.
    Between,
    /// Inside a frame, this many bytes in.
    In(Vec<u8>),
    /// Inside a frame that grew past the limit: skipped to its end, then refused.
    TooLarge { head: Vec<u8>, size: usize },
}

/// One connection: frames in, acknowledgements out, in order.
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    config: &Config,
    apply: &Arc<dyn Apply>,
) {
    let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
    let max = config.max_message_bytes.max(64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut state = State::Between;
    let mut skipped = 0usize;
    let mut prev_end = false;
    loop {
        let n = match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Err(_) => {
                tracing::info!(peer, "mllp connection idle: closed");
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(peer, error = %e, "mllp read failed");
                return;
            }
            Ok(Ok(0)) => {
                if matches!(state, State::In(_) | State::TooLarge { .. }) {
                    tracing::warn!(
                        peer,
                        "mllp peer closed inside a frame: the partial message is dropped, not acknowledged"
                    );
                }
                return;
            }
            Ok(Ok(n)) => n,
        };
        let mut frames = Vec::new();
        for &b in &buf[..n] {
            // The end block is two bytes; `prev_end` says the last byte was 0x1C.
            match &mut state {
                State::Between => {
                    if b == START {
                        if skipped > 0 {
                            tracing::warn!(
                                peer,
                                bytes = skipped,
                                "mllp bytes outside a frame skipped"
                            );
                            skipped = 0;
                        }
                        state = State::In(Vec::new());
                    } else {
                        skipped += 1;
                    }
                }
                State::In(frame) => {
                    if b == START {
                        tracing::warn!(
                            peer,
                            "mllp frame without end block dropped: a new one started"
                        );
                        frame.clear();
                        prev_end = false;
                        continue;
                    }
                    if prev_end && b == END[1] {
                        frame.pop();
                        frames.push(Ok(std::mem::take(frame)));
                        state = State::Between;
                        prev_end = false;
                        continue;
                    }
                    prev_end = b == END[0];
                    frame.push(b);
                    if frame.len() > max {
                        let head = std::mem::take(frame);
                        let size = head.len();
                        state = State::TooLarge { head, size };
                    }
                }
                State::TooLarge { head, size } => {
                    // A new frame ends this one too (its end block never came): refused, and
                    // the new frame served.
                    if b == START {
                        frames.push(Err((std::mem::take(head), *size)));
                        state = State::In(Vec::new());
                        prev_end = false;
                        continue;
                    }
                    *size += 1;
                    if prev_end && b == END[1] {
                        frames.push(Err((std::mem::take(head), *size - 2)));
                        state = State::Between;
                        prev_end = false;
                        continue;
                    }
                    prev_end = b == END[0];
                }
            }
        }
        for frame in frames {
            let ack = match frame {
                Ok(message) => handle(&message, config, apply).await,
                Err((head, size)) => {
                    tracing::warn!(peer, size, max, "mllp message too large: refused");
                    refuse(
                        &head,
                        config,
                        &format!("message of {size} bytes exceeds the limit of {max}"),
                    )
                }
            };
            let mut framed = Vec::with_capacity(ack.len() + 3);
            framed.push(START);
            framed.extend_from_slice(&ack);
            framed.extend_from_slice(&END);
            if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }
}

/// One message: parsed, mapped, applied; the acknowledgement to send.
pub async fn handle(raw: &[u8], config: &Config, apply: &Arc<dyn Apply>) -> Vec<u8> {
    let default = mapping::default_charset(config);
    let message = match Message::parse(raw, default) {
        Ok(m) => m,
        Err(e) => return refuse(raw, config, &e.0),
    };
    let mapped = match mapping::map(&message, config) {
        Ok(m) => m.with_digest(raw),
        Err(Refusal::Unsupported(why)) => {
            tracing::info!(why, "hl7v2 message rejected (AR)");
            return ack(&message, Code::Reject, Some(&why), ErrCode::Unsupported);
        }
        Err(Refusal::Invalid(why)) => {
            tracing::info!(why, "hl7v2 message not applied (AE)");
            return ack(&message, Code::Error, Some(&why), ErrCode::Data);
        }
    };
    // On its own task: a message that outlasts the limit is answered AR but still finishes
    // (written and audited, or not at all), so its resend finds a consistent state.
    let limit = Duration::from_secs(config.apply_timeout_secs.max(1));
    let work = {
        let (apply, mapped) = (apply.clone(), mapped.clone());
        tokio::spawn(async move { apply.apply(&mapped).await })
    };
    let applied = match tokio::time::timeout(limit, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(super::Failure::Unavailable(format!(
            "the write failed: {e}"
        ))),
        Err(_) => Err(super::Failure::Unavailable(format!(
            "not applied within {} s",
            limit.as_secs()
        ))),
    };
    match applied {
        Ok(super::Applied::Done) => ack(&message, Code::Accept, None, ErrCode::None),
        Ok(super::Applied::Duplicate) => ack(
            &message,
            Code::Accept,
            Some("applied before (same MSH-10 from this sender)"),
            ErrCode::None,
        ),
        Err(super::Failure::Rejected(why)) => {
            tracing::info!(
                event = mapped.event,
                control_id = mapped.control_id,
                why,
                "hl7v2 message not applied (AE)"
            );
            ack(&message, Code::Error, Some(&why), ErrCode::Application)
        }
        Err(super::Failure::Unavailable(why)) => {
            tracing::warn!(
                event = mapped.event,
                control_id = mapped.control_id,
                why,
                "hl7v2 message not applied: store unavailable (AR)"
            );
            ack(
                &message,
                Code::Reject,
                Some("the gateway cannot store the message now; send it again later"),
                ErrCode::Application,
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Accept,
    Error,
    Reject,
}

/// HL7 table 0357 codes for ERR-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrCode {
    None,
    /// 207 application internal error.
    Application,
    /// 102 data type error / content that cannot be applied.
    Data,
    /// 200 unsupported message type (or version, sender).
    Unsupported,
}

/// An acknowledgement (original mode) of `m`: MSH with sender and receiver swapped, MSA, and
/// for AE/AR an ERR segment. Written in the message's own separators and character set.
fn ack(m: &Message, code: Code, text: Option<&str>, err: ErrCode) -> Vec<u8> {
    let s = m.separators;
    let field = |seg: &str, n: usize| {
        m.segment(seg)
            .map(|x| raw_field(m, x, n))
            .unwrap_or_default()
    };
    let trigger = m
        .segment("MSH")
        .map(|x| m.get(x, 9).first().text(2))
        .unwrap_or_default();
    let msh = [
        "MSH".to_owned(),
        s.encoding_characters(),
        field("MSH", 5),
        field("MSH", 6),
        field("MSH", 3),
        field("MSH", 4),
        now_dtm(),
        String::new(),
        format!(
            "ACK{c}{t}{c}ACK",
            c = s.component,
            t = s.escape_text(&trigger)
        ),
        format!("ACK{}", uuid::Uuid::new_v4().simple()),
        field("MSH", 11),
        field("MSH", 12),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        field("MSH", 18),
    ];
    let f = s.field.to_string();
    let mut out = msh.join(&f);
    let code_text = match code {
        Code::Accept => "AA",
        Code::Error => "AE",
        Code::Reject => "AR",
    };
    out.push('\r');
    out.push_str(
        &[
            "MSA",
            code_text,
            &field("MSH", 10),
            &s.escape_text(text.unwrap_or("")),
        ]
        .join(&f),
    );
    out.push('\r');
    if let (Some(text), true) = (text, code != Code::Accept) {
        let (n, name) = match err {
            ErrCode::Application => ("207", "Application internal error"),
            ErrCode::Data => ("102", "Data type error"),
            ErrCode::Unsupported => ("200", "Unsupported message type"),
            ErrCode::None => ("0", "Message accepted"),
        };
        let c = s.component;
        out.push_str(
            &[
                "ERR".to_owned(),
                String::new(),
                String::new(),
                format!("{n}{c}{name}{c}HL70357"),
                "E".to_owned(),
                String::new(),
                String::new(),
                s.escape_text(text),
            ]
            .join(&f),
        );
        out.push('\r');
    }
    encode(&out, m.charset)
}

/// An AR for bytes that are not a readable message: MSH-10 and the addresses as far as they can
/// be read, default separators otherwise.
fn refuse(raw: &[u8], config: &Config, why: &str) -> Vec<u8> {
    let fallback = || {
        let mut m =
            Message::parse(b"MSH|^~\\&|||||||ACK|\r", Charset::Ascii).expect("a literal MSH");
        m.charset = mapping::default_charset(config);
        m
    };
    // The header alone may still be readable (the body was the problem).
    let head_end = raw
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(raw.len());
    let m = Message::parse(&raw[..head_end], mapping::default_charset(config))
        .or_else(|_| Message::parse(&raw[..head_end], Charset::Latin1))
        .unwrap_or_else(|_| fallback());
    tracing::info!(why, "hl7v2 message refused (AR)");
    ack(&m, Code::Reject, Some(why), ErrCode::Unsupported)
}

fn raw_field(m: &Message, seg: &crate::er7::Segment, n: usize) -> String {
    // Re-escape what was decoded, so the ACK carries the value as the sender wrote it.
    let f = m.get(seg, n);
    let s: &Separators = &m.separators;
    f.repeats()
        .iter()
        .map(|r| {
            (1..=20)
                .map(|c| s.escape_text(&r.text(c)))
                .collect::<Vec<_>>()
                .join(&s.component.to_string())
                .trim_end_matches(s.component)
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(&s.repetition.to_string())
}

fn encode(text: &str, charset: Charset) -> Vec<u8> {
    match charset {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Latin1 => text
            .chars()
            .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
            .collect(),
        Charset::Ascii => text
            .chars()
            .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
            .collect(),
    }
}

/// Now as a v2 DTM with offset (UTC).
fn now_dtm() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
