//! The control socket: a Unix stream socket (mode 0600: only the target's
//! user may drive it), one thread per connection, requests answered in
//! order. Methods run on the connection's thread and reach the data path
//! only through the engine's messages, so a slow method (a namespace drain)
//! never stalls a reactor.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use super::proto::{self, Response, RpcError};

/// What the server calls for each request: method name and params (an
/// object or `null`) to a result or an error.
pub type Handler = dyn Fn(&str, Value) -> Result<Value, RpcError> + Send + Sync;

/// A running control socket.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("path", &self.path)
            .finish()
    }
}

/// Binds `path` with mode 0600. A stale socket file (nobody listening) is
/// replaced; a live one is an error, so two daemons never share a socket.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another process is serving this socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let old = set_umask(0o177);
    let l = UnixListener::bind(path);
    set_umask(old);
    let l = l?;
    // Belt and braces: the umask covered the bind; make the mode explicit.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[allow(unsafe_code)]
fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only swaps the process's file-creation mask; it cannot
    // fail and touches no memory of ours.
    unsafe { libc::umask(mask) }
}

impl RpcServer {
    /// Binds the socket and starts accepting.
    pub fn start(path: &Path, handler: Arc<Handler>) -> std::io::Result<Self> {
        let listener = bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::Builder::new()
            .name("rpc-accept".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    if let Ok(c) = s.try_clone() {
                        let mut v = conns2.lock().unwrap_or_else(|p| p.into_inner());
                        v.retain(|c| c.peer_addr().is_ok());
                        v.push(c);
                    }
                    let h = handler.clone();
                    let _ = std::thread::Builder::new()
                        .name("rpc-conn".into())
                        .spawn(move || serve(s, &*h));
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            conns,
            accept: Some(accept),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes open connections and removes the socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop();
        }
    }
}

/// Answers one request value (an object or a batch); `None` when nothing
/// is to be sent (notifications only).
pub fn answer(v: Value, handler: &Handler) -> Option<Value> {
    match v {
        Value::Array(items) if items.is_empty() => Some(to_value(Response::err(
            Value::Null,
            RpcError::new(proto::INVALID_REQUEST, "empty batch"),
        ))),
        Value::Array(items) => {
            let out: Vec<Value> = items
                .into_iter()
                .filter_map(|i| answer_one(i, handler))
                .map(to_value)
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => answer_one(v, handler).map(to_value),
    }
}

fn answer_one(v: Value, handler: &Handler) -> Option<Response> {
    let call = match proto::parse_call(v) {
        Ok(c) => c,
        Err(bad) => {
            let (id, e) = *bad;
            return Some(Response::err(id, e));
        }
    };
    // A panic in a method is a bug; it must not take the connection (or
    // the daemon) down with it.
    let method = call.method.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler(&call.method, call.params)
    }))
    .unwrap_or_else(|_| {
        tracing::error!(method, "RPC method panicked");
        Err(RpcError::new(
            proto::INTERNAL_ERROR,
            format!("internal error in {method}"),
        ))
    });
    let id = call.id?;
    Some(match r {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(id, e),
    })
}

fn to_value(r: Response) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

fn serve(s: UnixStream, handler: &Handler) {
    let Ok(w) = s.try_clone() else { return };
    let mut w = BufWriter::new(w);
    let stream = serde_json::Deserializer::from_reader(BufReader::new(s)).into_iter::<Value>();
    for v in stream {
        let reply = match v {
            Ok(v) => answer(v, handler),
            Err(e) if e.is_eof() || e.is_io() => break,
            Err(e) => {
                // After a syntax error the stream cannot be resynchronised:
                // answer and close.
                let r = Response::err(
                    Value::Null,
                    RpcError::new(proto::PARSE_ERROR, format!("parse error: {e}")),
                );
                let _ = send(&mut w, &to_value(r));
                break;
            }
        };
        if let Some(r) = reply
            && send(&mut w, &r).is_err()
        {
            break;
        }
    }
}

fn send(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")?;
    w.flush()
}
