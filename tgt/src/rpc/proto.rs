//! JSON-RPC 2.0 wire types and error codes.
//!
//! Requests are JSON objects (or batches: arrays of them) on a byte stream;
//! each response is one JSON text followed by a newline. The codes of the
//! spec's section 5.1 are used for what they name; the implementation
//! range (-32000 to -32099) carries the target's own failures, so a client
//! can tell "no such namespace" from "namespace still in use" without
//! parsing messages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// A bug on the server side.
pub const INTERNAL_ERROR: i64 = -32603;
/// The operation was valid but failed (backend, timeout).
pub const OPERATION_FAILED: i64 = -32000;
/// The named object does not exist.
pub const NOT_FOUND: i64 = -32001;
/// An object with that name already exists.
pub const ALREADY_EXISTS: i64 = -32002;
/// The object is in use by another (a backend under a namespace).
pub const IN_USE: i64 = -32003;
/// The target is stopping; nothing was applied.
pub const STOPPING: i64 = -32004;

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// One line a user can act on.
    pub message: String,
    /// Extra detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Invalid params.
    pub fn params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// A request as the client sends it.
#[derive(Clone, Debug, Serialize)]
pub struct Request<'a> {
    /// Always "2.0".
    pub jsonrpc: &'static str,
    /// Method name.
    pub method: &'a str,
    /// Parameters (object), omitted when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<&'a Value>,
    /// Request id.
    pub id: u64,
}

/// A response as the server sends it: exactly one of `result` and `error`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Always "2.0".
    pub jsonrpc: String,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
    /// The request's id (null when it could not be read).
    pub id: Value,
}

impl Response {
    /// A success.
    pub fn ok(id: Value, result: Value) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            result: Some(result),
            error: None,
            id,
        }
    }

    /// A failure.
    pub fn err(id: Value, error: RpcError) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            result: None,
            error: Some(error),
            id,
        }
    }
}

/// A request as the server reads it, checked against the spec.
#[derive(Debug)]
pub struct Call {
    /// Method name.
    pub method: String,
    /// Parameters: an object, or `null` when absent.
    pub params: Value,
    /// `None` for a notification (no response is sent).
    pub id: Option<Value>,
}

/// A request that failed the checks: the id to answer with, and why.
pub type BadCall = Box<(Value, RpcError)>;

/// Checks one request object. On error, gives the id to answer with.
pub fn parse_call(v: Value) -> Result<Call, BadCall> {
    let Value::Object(mut m) = v else {
        return Err(Box::new((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "a request must be a JSON object"),
        )));
    };
    let id = m.remove("id");
    let reply_id = id.clone().unwrap_or(Value::Null);
    if let Some(i) = &id
        && !(i.is_string() || i.is_number() || i.is_null())
    {
        return Err(Box::new((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "\"id\" must be a string, number or null"),
        )));
    }
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Box::new((
            reply_id,
            RpcError::new(INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""),
        )));
    }
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(Box::new((
                reply_id,
                RpcError::new(INVALID_REQUEST, "\"method\" must be a string"),
            )));
        }
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => Value::Null,
        Some(p @ Value::Object(_)) => p,
        Some(Value::Array(_)) => {
            return Err(Box::new((
                reply_id,
                RpcError::params(
                    "params must be an object (by-name); positional params are not used",
                ),
            )));
        }
        Some(_) => {
            return Err(Box::new((
                reply_id,
                RpcError::new(INVALID_REQUEST, "\"params\" must be an object"),
            )));
        }
    };
    for k in m.keys() {
        if k != "jsonrpc" {
            return Err(Box::new((
                reply_id,
                RpcError::new(INVALID_REQUEST, format!("unknown request member \"{k}\"")),
            )));
        }
    }
    Ok(Call { method, params, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_against_the_spec() {
        let c = parse_call(json!({"jsonrpc":"2.0","method":"m","params":{"a":1},"id":7})).unwrap();
        assert_eq!((c.method.as_str(), c.id), ("m", Some(json!(7))));
        let n = parse_call(json!({"jsonrpc":"2.0","method":"m"})).unwrap();
        assert!(n.id.is_none() && n.params.is_null());
        let bad = [
            (json!([1]), INVALID_REQUEST),
            (json!({"method":"m","id":1}), INVALID_REQUEST),
            (json!({"jsonrpc":"2.0","method":5,"id":1}), INVALID_REQUEST),
            (
                json!({"jsonrpc":"2.0","method":"m","id":{}}),
                INVALID_REQUEST,
            ),
            (
                json!({"jsonrpc":"2.0","method":"m","params":[1],"id":1}),
                INVALID_PARAMS,
            ),
            (
                json!({"jsonrpc":"2.0","method":"m","params":3,"id":1}),
                INVALID_REQUEST,
            ),
            (
                json!({"jsonrpc":"2.0","method":"m","x":3,"id":1}),
                INVALID_REQUEST,
            ),
        ];
        for (v, code) in bad {
            let (_, e) = *parse_call(v.clone()).unwrap_err();
            assert_eq!(e.code, code, "{v}");
        }
    }
}
