//! EC2 API errors: a code, a message, the HTTP status EC2 answers with, and the EC2 error
//! envelope `<Response><Errors><Error>…</Error></Errors><RequestID>…</RequestID></Response>`.

use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// One EC2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(401, "AuthFailure", message)
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            format!("The request must contain the parameter {param}"),
        )
    }

    pub fn invalid(param: &str, why: &str) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            format!("Value for parameter {param} is invalid: {why}"),
        )
    }

    pub fn malformed_request(why: &str) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            format!("The request parameters cannot be decoded: {why}"),
        )
    }

    pub fn unknown_parameter(param: &str) -> Self {
        Self::new(
            400,
            "UnknownParameter",
            format!("The parameter {param} is not recognized"),
        )
    }

    pub fn invalid_filter(name: &str, known: &[&str]) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            format!("The filter '{name}' is invalid (filters: {})", known.join(", ")),
        )
    }

    pub fn invalid_action(action: &str) -> Self {
        Self::new(
            400,
            "InvalidAction",
            format!(
                "The action {action} is not valid for this web service (this endpoint answers BundleInstance, DescribeBundleTasks and CancelBundleTask)"
            ),
        )
    }

    pub fn dry_run() -> Self {
        Self::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "Unavailable", message)
    }

    /// The EC2 error envelope.
    pub fn to_xml(&self, request_id: &str) -> String {
        let mut w = Writer::new(Cursor::new(Vec::new()));
        let leaf = |w: &mut Writer<Cursor<Vec<u8>>>, name: &str, text: &str| -> std::io::Result<()> {
            w.write_event(Event::Start(BytesStart::new(name)))?;
            w.write_event(Event::Text(BytesText::new(text)))?;
            w.write_event(Event::End(BytesEnd::new(name)))
        };
        let r = (|| -> std::io::Result<()> {
            w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
            w.write_event(Event::Start(BytesStart::new("Response")))?;
            w.write_event(Event::Start(BytesStart::new("Errors")))?;
            w.write_event(Event::Start(BytesStart::new("Error")))?;
            leaf(&mut w, "Code", self.code)?;
            leaf(&mut w, "Message", &self.message)?;
            w.write_event(Event::End(BytesEnd::new("Error")))?;
            w.write_event(Event::End(BytesEnd::new("Errors")))?;
            leaf(&mut w, "RequestID", request_id)?;
            w.write_event(Event::End(BytesEnd::new("Response")))
        })();
        debug_assert!(r.is_ok());
        String::from_utf8_lossy(&w.into_inner().into_inner()).into_owned()
    }
}

impl From<crate::task::store::TaskStoreError> for ApiError {
    fn from(e: crate::task::store::TaskStoreError) -> Self {
        use crate::task::store::TaskStoreError as T;
        match &e {
            T::Io { .. } => Self::internal(format!("the task folder cannot be used: {e}")),
            T::NotFound(_) | T::InProgress { .. } => Self::new(400, e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_escapes_text() {
        let x = ApiError::invalid("Storage.S3.Prefix", "<b> & \"c\"").to_xml("req-1");
        assert!(x.starts_with(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>InvalidParameterValue</Code>"
        ));
        assert!(x.contains("&lt;b&gt; &amp;"), "{x}");
        assert!(x.ends_with("<RequestID>req-1</RequestID></Response>"), "{x}");
    }
}
