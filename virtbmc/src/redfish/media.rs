//! The virtual CD as Redfish shows it (VirtualMedia schema): one slot, `Cd`, reachable from
//! the System and from the Manager (clients look under the System first, then the Manager),
//! and what InsertMedia and a PATCH ask of the backend.

use serde_json::{Map, Value, json};

use super::error::{Error, Msg};
use super::resources::{MANAGER, SYSTEM, context, link};
use crate::backend::media::{self, MediaState, Medium};

pub const INSERT: &str = "VirtualMedia.InsertMedia";
pub const EJECT: &str = "VirtualMedia.EjectMedia";
/// The one slot's id.
pub const CD: &str = "Cd";

/// The resource a VirtualMedia collection hangs under; both show the same drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    System,
    Manager,
}

impl Place {
    fn base(self) -> &'static str {
        match self {
            Place::System => SYSTEM,
            Place::Manager => MANAGER,
        }
    }

    pub fn collection(self) -> String {
        format!("{}/VirtualMedia", self.base())
    }

    pub fn cd(self) -> String {
        format!("{}/{CD}", self.collection())
    }
}

pub fn collection(place: Place) -> Value {
    json!({
        "@odata.id": place.collection(),
        "@odata.type": "#VirtualMediaCollection.VirtualMediaCollection",
        "@odata.context": context("VirtualMediaCollection"),
        "Name": "Virtual Media Collection",
        "Members@odata.count": 1,
        "Members": [link(&place.cd())],
    })
}

/// The protocol of an image URL (the VirtualMedia TransferProtocolType).
fn protocol(image: &str) -> &'static str {
    if image.starts_with("https://") {
        "HTTPS"
    } else {
        "HTTP"
    }
}

/// The slot. Inserted and ConnectedVia say whether the machine can read the image now: an
/// image still being fetched, or one that failed, is not inserted, and Status says which.
pub fn cd(place: Place, medium: Option<&Medium>) -> Value {
    let inserted = medium.is_some_and(Medium::inserted);
    let status = match medium.map(|m| &m.state) {
        Some(MediaState::Importing { .. }) => json!({ "State": "Starting", "Health": "OK" }),
        Some(MediaState::Failed { .. }) => json!({ "State": "Enabled", "Health": "Critical" }),
        _ => json!({ "State": "Enabled", "Health": "OK" }),
    };
    json!({
        "@odata.id": place.cd(),
        "@odata.type": "#VirtualMedia.v1_6_0.VirtualMedia",
        "@odata.context": context("VirtualMedia"),
        "Id": CD,
        "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"],
        "Inserted": inserted,
        "Image": medium.map(|m| m.image.as_str()),
        "ImageName": medium.map(Medium::image_name),
        "WriteProtected": true,
        "ConnectedVia": if inserted { "URI" } else { "NotConnected" },
        "TransferProtocolType": medium.map(|m| protocol(&m.image)),
        "Status": status,
        "Actions": {
            "#VirtualMedia.InsertMedia": {
                "target": format!("{}/Actions/{INSERT}", place.cd()),
            },
            "#VirtualMedia.EjectMedia": {
                "target": format!("{}/Actions/{EJECT}", place.cd()),
            },
        },
    })
}

/// What a request asks of the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert(String),
    Eject,
    /// The drive already is as asked.
    Nothing,
}

impl Change {
    /// The operation's name in metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Change::Insert(_) => "insert",
            Change::Eject => "eject",
            Change::Nothing => "none",
        }
    }
}

/// The image an InsertMedia body asks for. Only `Image` is required; the optional
/// parameters are accepted when they describe what this drive does anyway (read-only,
/// inserted, over the URL's own protocol).
pub fn insert(body: &Map<String, Value>) -> Result<String, Error> {
    let param_type = |k: &str, v: &Value| {
        Error::new(
            400,
            Msg::ActionParameterValueTypeError,
            &[&v.to_string(), k, INSERT],
        )
    };
    let image = match body.get("Image") {
        None => {
            return Err(Error::new(
                400,
                Msg::ActionParameterMissing,
                &[INSERT, "Image"],
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(param_type("Image", v)),
    };
    if !media::valid_image(&image) {
        return Err(Error::new(
            400,
            Msg::ActionParameterValueFormatError,
            &[&image, "Image", INSERT],
        ));
    }
    for (k, v) in body {
        match (k.as_str(), v) {
            ("Image", _) => {}
            ("Inserted" | "WriteProtected", Value::Bool(true)) => {}
            ("Inserted" | "WriteProtected", Value::Bool(false)) => {
                return Err(Error::new(
                    400,
                    Msg::ActionParameterValueError,
                    &[k, INSERT],
                ));
            }
            ("TransferProtocolType", Value::String(p)) if p == protocol(&image) => {}
            // The backend either streams the image or copies it first; both are fine.
            ("TransferMethod", Value::String(m)) if m == "Stream" || m == "Upload" => {}
            ("TransferProtocolType" | "TransferMethod", Value::String(s)) => {
                return Err(Error::new(
                    400,
                    Msg::ActionParameterValueNotInList,
                    &[s, k, INSERT],
                ));
            }
            ("Inserted" | "WriteProtected" | "TransferProtocolType" | "TransferMethod", v) => {
                return Err(param_type(k, v));
            }
            // Images are fetched without credentials.
            ("UserName" | "Password", _) => {
                return Err(Error::new(
                    400,
                    Msg::ActionParameterNotSupported,
                    &[k, INSERT],
                ));
            }
            (k, _) => {
                return Err(Error::new(400, Msg::ActionParameterUnknown, &[INSERT, k]));
            }
        }
    }
    Ok(image)
}

/// EjectMedia takes no parameters; clients send no body or `{}`.
pub fn eject(body: &Map<String, Value>) -> Result<(), Error> {
    match body.keys().next() {
        None => Ok(()),
        Some(k) => Err(Error::new(400, Msg::ActionParameterUnknown, &[EJECT, k])),
    }
}

/// What a PATCH of the slot asks: `Image` (a URL, or null to eject), `Inserted`, and
/// `WriteProtected` (which can only stay true).
pub fn patch(body: &Map<String, Value>, current: Option<&Medium>) -> Result<Change, Error> {
    let mut image: Option<Option<String>> = None;
    let mut inserted: Option<bool> = None;
    for (k, v) in body {
        match (k.as_str(), v) {
            ("Image", Value::Null) => image = Some(None),
            ("Image", Value::String(s)) if s.is_empty() => image = Some(None),
            ("Image", Value::String(s)) if media::valid_image(s) => image = Some(Some(s.clone())),
            ("Image", Value::String(s)) => {
                return Err(Error::new(400, Msg::PropertyValueFormatError, &[s, k]));
            }
            ("Inserted", Value::Bool(b)) => inserted = Some(*b),
            ("WriteProtected", Value::Bool(true)) => {}
            ("WriteProtected", Value::Bool(false)) => {
                return Err(Error::new(400, Msg::PropertyValueNotInList, &["false", k]));
            }
            ("Image" | "Inserted" | "WriteProtected", v) => {
                return Err(Error::new(
                    400,
                    Msg::PropertyValueTypeError,
                    &[&v.to_string(), k],
                ));
            }
            (k, _) if cd(Place::System, current).get(k).is_some() => {
                return Err(Error::new(400, Msg::PropertyNotWritable, &[k]));
            }
            (k, _) => return Err(Error::new(400, Msg::PropertyUnknown, &[k])),
        }
    }
    let current = current.map(|m| m.image.as_str());
    Ok(match (image, inserted) {
        (Some(Some(_)), Some(false)) => {
            return Err(Error::new(
                400,
                Msg::PropertyValueConflict,
                &["Inserted", "Image"],
            ));
        }
        (Some(Some(url)), _) if current == Some(url.as_str()) => Change::Nothing,
        (Some(Some(url)), _) => Change::Insert(url),
        (Some(None), Some(true)) => {
            return Err(Error::new(
                400,
                Msg::PropertyValueConflict,
                &["Inserted", "Image"],
            ));
        }
        (Some(None), _) | (None, Some(false)) => match current {
            Some(_) => Change::Eject,
            None => Change::Nothing,
        },
        (None, Some(true)) if current.is_none() => {
            return Err(Error::new(400, Msg::PropertyMissing, &["Image"]));
        }
        (None, _) => Change::Nothing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn msg(e: Error) -> (u16, Msg, Vec<String>) {
        (e.status, e.msg, e.args)
    }

    #[test]
    fn insert_needs_an_http_image_and_names_a_bad_one() {
        let url = "http://10.0.0.1:8000/boot.iso";
        assert_eq!(insert(&body(json!({ "Image": url }))).unwrap(), url);
        let all = json!({
            "Image": "https://h/b.iso", "Inserted": true, "WriteProtected": true,
            "TransferProtocolType": "HTTPS", "TransferMethod": "Stream",
        });
        assert_eq!(insert(&body(all)).unwrap(), "https://h/b.iso");
        assert_eq!(
            msg(insert(&body(json!({ "Image": "nfs://h/b.iso" }))).unwrap_err()),
            (
                400,
                Msg::ActionParameterValueFormatError,
                vec!["nfs://h/b.iso".into(), "Image".into(), INSERT.into()]
            )
        );
        assert_eq!(
            insert(&body(json!({}))).unwrap_err().msg,
            Msg::ActionParameterMissing
        );
        for (extra, m) in [
            (
                json!({ "TransferProtocolType": "HTTPS" }),
                Msg::ActionParameterValueNotInList,
            ),
            (
                json!({ "WriteProtected": false }),
                Msg::ActionParameterValueError,
            ),
            (json!({ "UserName": "u" }), Msg::ActionParameterNotSupported),
            (json!({ "Floppy": 1 }), Msg::ActionParameterUnknown),
            (json!({ "Inserted": 1 }), Msg::ActionParameterValueTypeError),
        ] {
            let mut b = body(extra.clone());
            b.insert("Image".into(), json!(url));
            assert_eq!(insert(&b).unwrap_err().msg, m, "{extra}");
        }
        assert!(eject(&Map::new()).is_ok());
        assert!(eject(&body(json!({ "Image": url }))).is_err());
    }

    #[test]
    fn patch_inserts_ejects_or_refuses_a_contradiction() {
        let m = Medium {
            image: "http://h/a.iso".into(),
            state: MediaState::Inserted,
        };
        let p = |v: Value, cur| patch(&body(v), cur);
        assert_eq!(
            p(
                json!({ "Image": "http://h/b.iso", "Inserted": true }),
                Some(&m)
            ),
            Ok(Change::Insert("http://h/b.iso".into()))
        );
        assert_eq!(
            p(json!({ "Image": "http://h/a.iso" }), Some(&m)),
            Ok(Change::Nothing)
        );
        assert_eq!(p(json!({ "Image": null }), Some(&m)), Ok(Change::Eject));
        assert_eq!(p(json!({ "Inserted": false }), Some(&m)), Ok(Change::Eject));
        assert_eq!(p(json!({ "Inserted": false }), None), Ok(Change::Nothing));
        let e = |v: Value, cur| p(v, cur).unwrap_err().msg;
        assert_eq!(e(json!({ "Inserted": true }), None), Msg::PropertyMissing);
        assert_eq!(
            e(
                json!({ "Image": "http://h/b.iso", "Inserted": false }),
                None
            ),
            Msg::PropertyValueConflict
        );
        assert_eq!(
            e(json!({ "Image": "tftp://h/b.iso" }), None),
            Msg::PropertyValueFormatError
        );
        assert_eq!(
            e(json!({ "MediaTypes": [] }), None),
            Msg::PropertyNotWritable
        );
        assert_eq!(e(json!({ "Floppy": 1 }), None), Msg::PropertyUnknown);
    }

    #[test]
    fn the_slot_reports_an_import_as_not_yet_inserted() {
        let importing = Medium {
            image: "https://h/x.iso".into(),
            state: MediaState::Importing {
                progress: Some("40%".into()),
            },
        };
        let d = cd(Place::Manager, Some(&importing));
        assert_eq!(d["@odata.id"], "/redfish/v1/Managers/1/VirtualMedia/Cd");
        assert_eq!(
            (&d["Inserted"], &d["ConnectedVia"], &d["Image"]),
            (
                &json!(false),
                &json!("NotConnected"),
                &json!("https://h/x.iso")
            )
        );
        let d = cd(Place::System, None);
        assert_eq!((&d["Inserted"], &d["Image"]), (&json!(false), &Value::Null));
        assert_eq!(
            d["Actions"]["#VirtualMedia.EjectMedia"]["target"],
            "/redfish/v1/Systems/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia"
        );
    }
}
