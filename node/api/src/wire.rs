//! The request body both front-ends accept: OpenAI's chat completion request (fields we do not
//! use are ignored), plus Bitorch's `account` (who pays) and, for JSON-RPC, `prompt`/`system`
//! as a shorthand for a one-turn conversation.

use crate::backend::{ChatRequest, Message, Payer, Role, DEFAULT_TEMPERATURE};
use crate::BackendError;
use serde::Deserialize;
use serde_json::Value;

/// A chat completion request as it arrives. Numbers are taken as JSON values and checked by
/// hand, so a wrong type or range gets a message that names the field.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChatBody {
    pub model: Option<Value>,
    pub messages: Option<Value>,
    pub prompt: Option<Value>,
    pub system: Option<Value>,
    pub max_tokens: Option<Value>,
    pub max_completion_tokens: Option<Value>,
    pub temperature: Option<Value>,
    pub top_p: Option<Value>,
    pub seed: Option<Value>,
    pub stop: Option<Value>,
    pub n: Option<Value>,
    pub presence_penalty: Option<Value>,
    pub frequency_penalty: Option<Value>,
    pub stream: Option<Value>,
    pub stream_options: Option<Value>,
    pub account: Option<Value>,
    /// Bitorch: an API token (`btr_…`) whose user pays (JSON-RPC; over HTTP it comes as
    /// `Authorization: Bearer`).
    #[serde(default)]
    pub api_key: Option<Value>,
    /// Bitorch: the most the client pays per layer per token, in BTR as a string (`"0.0002"`).
    #[serde(default)]
    pub max_price: Option<Value>,
}

/// Streaming options of a parsed body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamOptions {
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
}

fn bad(param: &str, message: impl Into<String>) -> BackendError {
    BackendError::bad_param(param, message)
}

/// Serde's message for a body that is not the object we expect, made readable.
pub(crate) fn parse_body(bytes: &[u8]) -> Result<ChatBody, BackendError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        BackendError::bad_request(format!("the request body is not valid JSON: {e}"))
    })?;
    from_value(value)
}

pub(crate) fn from_value(value: Value) -> Result<ChatBody, BackendError> {
    if !value.is_object() {
        return Err(BackendError::bad_request(
            "the request body must be a JSON object with 'model' and 'messages'",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| BackendError::bad_request(format!("the request body is malformed: {e}")))
}

fn number(v: &Option<Value>, param: &str) -> Result<Option<f64>, BackendError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(bad(param, format!("{param} must be a number, got {other}"))),
    }
}

fn integer(v: &Option<Value>, param: &str) -> Result<Option<i64>, BackendError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(_)) => Ok(Some(i64::MAX)),
            _ => Err(bad(param, format!("{param} must be an integer, got {n}"))),
        },
        Some(other) => Err(bad(param, format!("{param} must be an integer, got {other}"))),
    }
}

fn boolean(v: &Option<Value>, param: &str) -> Result<bool, BackendError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(param, format!("{param} must be true or false, got {other}"))),
    }
}

fn role(v: Option<&Value>, at: &str) -> Result<Role, BackendError> {
    let param = format!("{at}.role");
    match v.and_then(Value::as_str) {
        Some("system" | "developer") => Ok(Role::System),
        Some("user") => Ok(Role::User),
        Some("assistant") => Ok(Role::Assistant),
        Some(other) => Err(bad(
            &param,
            format!("{param} '{other}' is not supported; use system, user or assistant"),
        )),
        None => Err(bad(&param, format!("{param} must be a string: system, user or assistant"))),
    }
}

fn content(v: Option<&Value>, at: &str) -> Result<String, BackendError> {
    let param = format!("{at}.content");
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        // Content parts: only text is supported; the parts are joined.
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(bad(
                            &format!("{param}[{i}]"),
                            format!(
                                "only text content parts are supported; {param}[{i}] has type {}",
                                kind.unwrap_or("(none)")
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(other) => Err(bad(&param, format!("{param} must be a string, got {other}"))),
    }
}

fn messages(v: &Value) -> Result<Vec<Message>, BackendError> {
    let list = v.as_array().ok_or_else(|| bad("messages", "messages must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            if !m.is_object() {
                return Err(bad(&at, format!("{at} must be an object with role and content")));
            }
            Ok(Message {
                role: role(m.get("role"), &at)?,
                content: content(m.get("content"), &at)?,
            })
        })
        .collect()
}

fn string(v: &Option<Value>, param: &str) -> Result<Option<String>, BackendError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(param, format!("{param} must be a string, got {other}"))),
    }
}

impl ChatBody {
    /// Checks the body and turns it into a backend request and its streaming options.
    pub(crate) fn into_request(self) -> Result<(ChatRequest, StreamOptions), BackendError> {
        let model = string(&self.model, "model")?
            .ok_or_else(|| bad("model", "model is required: the id of a served model"))?;
        let messages = match (&self.messages, string(&self.prompt, "prompt")?) {
            (Some(v), None) if !v.is_null() => messages(v)?,
            (None | Some(Value::Null), Some(prompt)) => {
                let mut m = Vec::new();
                if let Some(system) = string(&self.system, "system")? {
                    m.push(Message::new(Role::System, system));
                }
                m.push(Message::new(Role::User, prompt));
                m
            }
            (Some(_), Some(_)) => {
                return Err(bad("prompt", "give either messages or prompt, not both"));
            }
            _ => return Err(bad("messages", "messages is required: a list of {role, content}")),
        };
        let max = match integer(&self.max_completion_tokens, "max_completion_tokens")? {
            Some(m) => Some((m, "max_completion_tokens")),
            None => integer(&self.max_tokens, "max_tokens")?.map(|m| (m, "max_tokens")),
        };
        let max_tokens = match max {
            None => None,
            Some((m, param)) if m < 1 => {
                return Err(bad(param, format!("{param} must be at least 1, got {m}")));
            }
            Some((m, _)) => Some(u32::try_from(m).unwrap_or(u32::MAX)),
        };
        if let Some(n) = integer(&self.n, "n")? {
            if n != 1 {
                return Err(bad("n", format!("n must be 1 (one choice per request), got {n}")));
            }
        }
        for (v, param) in [
            (&self.presence_penalty, "presence_penalty"),
            (&self.frequency_penalty, "frequency_penalty"),
        ] {
            // Accepted for compatibility, not applied.
            if let Some(p) = number(v, param)? {
                if !(-2.0..=2.0).contains(&p) {
                    return Err(bad(param, format!("{param} must be between -2 and 2, got {p}")));
                }
            }
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|s| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        bad("stop", format!("stop must be a string or a list of strings, got {s}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(bad(
                    "stop",
                    format!("stop must be a string or a list of strings, got {other}"),
                ))
            }
        };
        let payer = match (string(&self.account, "account")?, string(&self.api_key, "api_key")?) {
            (Some(_), Some(_)) => {
                return Err(bad("api_key", "give an account or an API token, not both"))
            }
            (None, Some(t)) => Payer::Token(t),
            (None, None) => Payer::Node,
            (Some(a), None) => {
                Payer::Account(bitorch_primitives::parse_account(&a).map_err(|e| {
                    bad("account", format!("account must be an SS58 address or 0x public key: {e}"))
                })?)
            }
        };
        let include_usage = match &self.stream_options {
            None | Some(Value::Null) => false,
            Some(o) if o.is_object() => {
                boolean(&o.get("include_usage").cloned(), "stream_options.include_usage")?
            }
            Some(other) => {
                return Err(bad(
                    "stream_options",
                    format!("stream_options must be an object, got {other}"),
                ))
            }
        };
        let request = ChatRequest {
            model,
            messages,
            max_tokens,
            temperature: number(&self.temperature, "temperature")?.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: number(&self.top_p, "top_p")?.unwrap_or(1.0),
            // Negative seeds are valid in OpenAI's API: keep their bits.
            seed: integer(&self.seed, "seed")?.map(|s| s as u64),
            stop,
            payer,
            max_price: match string(&self.max_price, "max_price")? {
                None => None,
                Some(p) => Some(bitorch_primitives::parse_amount(&p).map_err(|e| {
                    bad(
                        "max_price",
                        format!("max_price must be an amount of BTR such as \"0.0002\": {e}"),
                    )
                })?),
            },
        };
        request.validate()?;
        let stream = boolean(&self.stream, "stream")?;
        Ok((request, StreamOptions { stream, include_usage }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<(ChatRequest, StreamOptions), BackendError> {
        from_value(v)?.into_request()
    }

    fn param_of(v: Value) -> String {
        match parse(v) {
            Err(BackendError::BadRequest { param, message }) => {
                assert!(!message.is_empty());
                param.unwrap_or_default()
            }
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn parses_openai_requests() {
        let (r, s) = parse(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null},
            ],
            "max_completion_tokens": 5, "max_tokens": 9, "temperature": 0, "top_p": 0.5,
            "seed": -1, "stop": "\n", "n": 1, "stream": true,
            "stream_options": {"include_usage": true},
            "logprobs": false, "tools": [], "user": "someone",
        }))
        .unwrap();
        assert_eq!(r.messages[0], Message::new(Role::System, "Be brief."));
        assert_eq!(r.messages[1], Message::new(Role::User, "Hi there"));
        assert_eq!(r.messages[2], Message::new(Role::Assistant, ""));
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!((r.temperature, r.top_p, r.seed), (0.0, 0.5, Some(u64::MAX)));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(r.payer, Payer::Node);
        assert_eq!(s, StreamOptions { stream: true, include_usage: true });

        let (r, s) = parse(json!({"model": "m", "prompt": "Hi", "system": "S"})).unwrap();
        assert_eq!(
            r.messages,
            vec![Message::new(Role::System, "S"), Message::new(Role::User, "Hi")]
        );
        assert_eq!((r.temperature, r.max_tokens, s.stream), (DEFAULT_TEMPERATURE, None, false));

        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let (r, _) = parse(json!({"model": "m", "prompt": "Hi", "account": alice})).unwrap();
        assert!(matches!(r.payer, Payer::Account(_)));
    }

    #[test]
    fn rejects_with_the_field_named() {
        let m = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        assert_eq!(param_of(json!({"messages": []})), "model");
        assert_eq!(param_of(json!({"model": "m"})), "messages");
        assert_eq!(param_of(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(param_of(m(json!({"temperature": -1}))), "temperature");
        assert_eq!(param_of(m(json!({"temperature": "hot"}))), "temperature");
        assert_eq!(param_of(m(json!({"max_tokens": 0}))), "max_tokens");
        assert_eq!(param_of(m(json!({"max_tokens": 1.5}))), "max_tokens");
        assert_eq!(param_of(m(json!({"top_p": 1.5}))), "top_p");
        assert_eq!(param_of(m(json!({"n": 2}))), "n");
        assert_eq!(param_of(m(json!({"stop": 3}))), "stop");
        assert_eq!(param_of(m(json!({"presence_penalty": 3}))), "presence_penalty");
        assert_eq!(param_of(m(json!({"account": "nope"}))), "account");
        assert_eq!(param_of(m(json!({"stream": "yes"}))), "stream");
        assert_eq!(
            param_of(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            param_of(json!({"model": "m", "messages": [{"role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
            "messages[0].content[0]"
        );
        assert!(matches!(parse_body(b"{nope"), Err(BackendError::BadRequest { param: None, .. })));
        assert!(matches!(parse_body(b"[1]"), Err(BackendError::BadRequest { param: None, .. })));
    }
}
