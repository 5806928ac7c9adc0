//! Bundle tasks in the shapes EC2 uses: ids (`bun-` + 8 hex digits, `i-` + 17), states,
//! ISO-8601 times with milliseconds, and the three renderings: the aws-cli JSON shape, the
//! exact EC2 `BundleInstanceResponse` XML, and text.

pub mod imds;
pub mod run;
pub mod store;

use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// EC2's XML namespace for API version 2016-11-15.
pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Task states, as EC2 spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Pending,
    WaitingForShutdown,
    Bundling,
    Storing,
    Cancelling,
    Complete,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::WaitingForShutdown => "waiting-for-shutdown",
            State::Bundling => "bundling",
            State::Storing => "storing",
            State::Cancelling => "cancelling",
            State::Complete => "complete",
            State::Failed => "failed",
        }
    }
}

/// A bundle task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleTask {
    pub bundle_id: String,
    pub instance_id: String,
    pub state: State,
    pub start_time: String,
    pub update_time: String,
    pub bucket: String,
    pub prefix: String,
    pub progress: String,
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

impl TaskError {
    /// The task error for `e`: its code, and its message followed by what to do about it.
    pub fn from_error(e: &crate::Error) -> Self {
        let message = match e.hint() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        };
        Self {
            code: e.code().into(),
            message,
        }
    }
}

/// Now, as EC2 writes times: `2008-10-07T11:41:50.000Z`.
pub fn now_iso() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to time and pid, hashed.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        b.copy_from_slice(&Sha256::digest(seed.as_bytes())[..bytes]);
    }
    hex::encode(b)
}

/// A new bundle id: `bun-` + 8 hex digits.
pub fn new_bundle_id() -> String {
    format!("bun-{}", random_hex(4))
}

/// A request id for EC2 responses (a UUID).
pub fn new_request_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A stable instance id derived from what identifies the source: `i-` + 17 hex digits.
pub fn derived_instance_id(identity: &str) -> String {
    let h = hex::encode(Sha256::digest(format!("winbundle-instance:{identity}").as_bytes()));
    format!("i-{}", &h[..17])
}

/// Checks a user-given instance id (`i-` + 8 or 17 hex digits).
pub fn check_instance_id(id: &str) -> Result<(), String> {
    let hex = id
        .strip_prefix("i-")
        .ok_or_else(|| format!("{id:?} does not start with 'i-'"))?;
    if !(hex.len() == 8 || hex.len() == 17) || !hex.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return Err(format!("{id:?} is not i- followed by 8 or 17 lower-case hex digits"));
    }
    Ok(())
}

impl BundleTask {
    /// The aws-cli JSON shape of one task.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "InstanceId": self.instance_id,
            "BundleId": self.bundle_id,
            "State": self.state.as_str(),
            "StartTime": self.start_time,
            "UpdateTime": self.update_time,
            "Storage": {"S3": {"Bucket": self.bucket, "Prefix": self.prefix}},
            "Progress": self.progress,
        });
        if let Some(e) = &self.error {
            v["BundleTaskError"] = serde_json::json!({"Code": e.code, "Message": e.message});
        }
        v
    }

    fn write_xml(&self, w: &mut Writer<Cursor<Vec<u8>>>, element: &str) -> std::io::Result<()> {
        fn leaf(w: &mut Writer<Cursor<Vec<u8>>>, name: &str, text: &str) -> std::io::Result<()> {
            w.write_event(Event::Start(BytesStart::new(name)))?;
            w.write_event(Event::Text(BytesText::new(text)))?;
            w.write_event(Event::End(BytesEnd::new(name)))?;
            Ok(())
        }
        w.write_event(Event::Start(BytesStart::new(element)))?;
        leaf(w, "instanceId", &self.instance_id)?;
        leaf(w, "bundleId", &self.bundle_id)?;
        leaf(w, "state", self.state.as_str())?;
        leaf(w, "startTime", &self.start_time)?;
        leaf(w, "updateTime", &self.update_time)?;
        w.write_event(Event::Start(BytesStart::new("storage")))?;
        w.write_event(Event::Start(BytesStart::new("S3")))?;
        leaf(w, "bucket", &self.bucket)?;
        leaf(w, "prefix", &self.prefix)?;
        w.write_event(Event::End(BytesEnd::new("S3")))?;
        w.write_event(Event::End(BytesEnd::new("storage")))?;
        leaf(w, "progress", &self.progress)?;
        if let Some(e) = &self.error {
            w.write_event(Event::Start(BytesStart::new("error")))?;
            leaf(w, "code", &e.code)?;
            leaf(w, "message", &e.message)?;
            w.write_event(Event::End(BytesEnd::new("error")))?;
        }
        w.write_event(Event::End(BytesEnd::new(element)))?;
        Ok(())
    }

    /// The EC2 `BundleInstanceResponse` document for this task.
    pub fn to_bundle_instance_xml(&self, request_id: &str) -> String {
        response_xml("BundleInstanceResponse", request_id, |w| {
            self.write_xml(w, "bundleInstanceTask")
        })
    }

    /// The EC2 `CancelBundleTaskResponse` document for this task.
    pub fn to_cancel_xml(&self, request_id: &str) -> String {
        response_xml("CancelBundleTaskResponse", request_id, |w| {
            self.write_xml(w, "bundleInstanceTask")
        })
    }

    /// Tab-separated text, like the aws-cli's `--output text`.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "BUNDLETASK\t{}\t{}\t{}\t{}\t{}\t{}\nS3\t{}\t{}\n",
            self.bundle_id,
            self.instance_id,
            self.progress,
            self.start_time,
            self.state.as_str(),
            self.update_time,
            self.bucket,
            self.prefix
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("BUNDLETASKERROR\t{}\t{}\n", e.code, e.message));
        }
        s
    }
}

type XmlWriter = Writer<Cursor<Vec<u8>>>;

/// An EC2 response document: `<NAME xmlns=…><requestId>…</requestId>BODY</NAME>`.
fn response_xml(name: &str, request_id: &str, body: impl FnOnce(&mut XmlWriter) -> std::io::Result<()>) -> String {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let r = (|| -> std::io::Result<()> {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let mut root = BytesStart::new(name);
        root.push_attribute(("xmlns", EC2_NAMESPACE));
        w.write_event(Event::Start(root))?;
        w.write_event(Event::Start(BytesStart::new("requestId")))?;
        w.write_event(Event::Text(BytesText::new(request_id)))?;
        w.write_event(Event::End(BytesEnd::new("requestId")))?;
        body(&mut w)?;
        w.write_event(Event::End(BytesEnd::new(name)))?;
        Ok(())
    })();
    debug_assert!(r.is_ok());
    String::from_utf8_lossy(&w.into_inner().into_inner()).into_owned() + "\n"
}

/// The EC2 `DescribeBundleTasksResponse` document.
pub fn describe_xml(tasks: &[BundleTask], request_id: &str) -> String {
    response_xml("DescribeBundleTasksResponse", request_id, |w| {
        w.write_event(Event::Start(BytesStart::new("bundleInstanceTasksSet")))?;
        for t in tasks {
            t.write_xml(w, "item")?;
        }
        w.write_event(Event::End(BytesEnd::new("bundleInstanceTasksSet")))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_ec2_shapes() {
        let b = new_bundle_id();
        assert!(
            b.starts_with("bun-") && b.len() == 12 && b[4..].bytes().all(|c| c.is_ascii_hexdigit()),
            "{b}"
        );
        let i = derived_instance_id("disk-guid/3/serial");
        assert_eq!(i, derived_instance_id("disk-guid/3/serial"));
        assert!(check_instance_id(&i).is_ok());
        assert!(check_instance_id("i-1234567890abcdef0").is_ok());
        assert!(check_instance_id("x-123").is_err());
        assert!(check_instance_id("i-XYZ").is_err());
    }
}
