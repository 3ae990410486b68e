//! The client side of the control socket, used by `nvmf-tgt rpc` and by
//! tests.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::proto::{Request, Response, RpcError};

/// Why a call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the connection broke.
    #[error("{path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The server's answer is not a JSON-RPC response.
    #[error("malformed response: {0}")]
    Protocol(String),
    /// The server answered with an error.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// One connection to a control socket.
#[derive(Debug)]
pub struct RpcClient {
    path: String,
    stream: UnixStream,
    next_id: u64,
}

impl RpcClient {
    /// Connects; `timeout` bounds each read (a drain can take a while, so
    /// give methods that drain the target's drain timeout and more).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let io = |source| ClientError::Io {
            path: path.display().to_string(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        Ok(Self {
            path: path.display().to_string(),
            stream,
            next_id: 1,
        })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends raw bytes and reads one JSON value back (tests of malformed
    /// input use this).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<Value, ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.io(e))?;
        let mut de = serde_json::Deserializer::from_reader(BufReader::new(&self.stream));
        Value::deserialize(&mut de).map_err(|e| {
            if e.is_io() || e.is_eof() {
                ClientError::Protocol(format!("connection closed: {e}"))
            } else {
                ClientError::Protocol(e.to_string())
            }
        })
    }

    /// Calls a method; `params` is an object or `Value::Null`.
    pub fn call(&mut self, method: &str, params: &Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            jsonrpc: "2.0",
            method,
            params: (!params.is_null()).then_some(params),
            id,
        };
        let mut bytes =
            serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(b'\n');
        let v = self.raw(&bytes)?;
        let r: Response =
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if r.id != id {
            return Err(ClientError::Protocol(format!(
                "response id {} for request {id}",
                r.id
            )));
        }
        match (r.result, r.error) {
            (_, Some(e)) => Err(ClientError::Rpc(e)),
            (Some(v), None) => Ok(v),
            (None, None) => Err(ClientError::Protocol("neither result nor error".into())),
        }
    }
}

/// Turns `nvmf-tgt rpc` arguments into params: one JSON object, or
/// `key=value` pairs whose values are read as JSON when they parse
/// (`nsid=2`, `read_only=true`, `hosts=["nqn..."]`) and as strings
/// otherwise (`nqn=nqn.2026-01.io.example:disk`).
pub fn params_from_args(args: &[String]) -> Result<Value, String> {
    if args.is_empty() {
        return Ok(Value::Null);
    }
    if args.len() == 1 && args[0].trim_start().starts_with('{') {
        return serde_json::from_str(&args[0]).map_err(|e| format!("params: not JSON: {e}"));
    }
    let mut m = serde_json::Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!(
                "params: expected key=value or one JSON object, got '{a}'"
            ));
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        m.insert(k.to_owned(), v);
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_from_pairs_and_json() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            params_from_args(&a(&["nqn=nqn.x:y", "nsid=2", "read_only=true"])).unwrap(),
            json!({"nqn":"nqn.x:y","nsid":2,"read_only":true})
        );
        assert_eq!(
            params_from_args(&a(&[r#"{"name":"r","size":"1MiB"}"#])).unwrap(),
            json!({"name":"r","size":"1MiB"})
        );
        assert!(params_from_args(&a(&["oops"])).is_err());
        assert_eq!(params_from_args(&[]).unwrap(), Value::Null);
    }
}
