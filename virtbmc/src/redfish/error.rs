//! Redfish error answers: an HTTP status and the `error` object with `@Message.ExtendedInfo`
//! (Redfish DSP0266 §9.6), whose MessageIds and texts are those of the DMTF Base message
//! registry (version below). Clients (sushy) read the status; people read the message.

use serde_json::{Value, json};

/// The Base registry version the MessageIds are taken from.
const BASE: &str = "Base.1.22.1";

/// One Base registry message: its id, its text with `%N` placeholders, severity and
/// resolution, copied from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    GeneralError,
    ResourceNotFound,
    OperationNotAllowed,
    PreconditionFailed,
    ActionParameterMissing,
    ActionParameterUnknown,
    ActionParameterValueNotInList,
    ActionParameterValueTypeError,
    ActionParameterValueFormatError,
    ActionParameterValueError,
    ActionParameterNotSupported,
    ActionNotSupported,
    PropertyUnknown,
    PropertyNotWritable,
    PropertyValueNotInList,
    PropertyValueTypeError,
    PropertyValueFormatError,
    PropertyValueConflict,
    PropertyMissing,
    MalformedJSON,
    InsufficientPrivilege,
    NoValidSession,
    ServiceTemporarilyUnavailable,
    PayloadTooLarge,
    ResourceInStandby,
}

impl Msg {
    fn text(self) -> (&'static str, &'static str, &'static str, &'static str) {
        use Msg::*;
        match self {
            GeneralError => (
                "GeneralError",
                "A general error has occurred.  See Resolution for information on how to resolve the error, or @Message.ExtendedInfo if Resolution is not provided.",
                "Critical",
                "None.",
            ),
            ResourceNotFound => (
                "ResourceNotFound",
                "The requested resource of type %1 named '%2' was not found.",
                "Critical",
                "Provide a valid resource identifier and resubmit the request.",
            ),
            OperationNotAllowed => (
                "OperationNotAllowed",
                "The HTTP method is not allowed on this resource.",
                "Critical",
                "None.",
            ),
            PreconditionFailed => (
                "PreconditionFailed",
                "The ETag supplied did not match the ETag required to change this resource.",
                "Critical",
                "Try the operation again using the appropriate ETag.",
            ),
            ActionParameterMissing => (
                "ActionParameterMissing",
                "The action %1 requires the parameter %2 to be present in the request body.",
                "Critical",
                "Supply the action with the required parameter in the request body when the request is resubmitted.",
            ),
            ActionParameterUnknown => (
                "ActionParameterUnknown",
                "The action %1 was submitted with the invalid parameter %2.",
                "Warning",
                "Correct the invalid action parameter and resubmit the request if the operation failed.",
            ),
            ActionParameterValueNotInList => (
                "ActionParameterValueNotInList",
                "The value '%1' for the parameter %2 in the action %3 is not in the list of acceptable values.",
                "Warning",
                "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
            ),
            ActionParameterValueTypeError => (
                "ActionParameterValueTypeError",
                "The value '%1' for the parameter %2 in the action %3 is not a type that the parameter can accept.",
                "Warning",
                "Correct the value for the parameter in the request body and resubmit the request if the operation failed.",
            ),
            ActionParameterValueFormatError => (
                "ActionParameterValueFormatError",
                "The value '%1' for the parameter %2 in the action %3 is not a format that the parameter can accept.",
                "Warning",
                "Correct the value for the parameter in the request body and resubmit the request if the operation failed.",
            ),
            ActionParameterValueError => (
                "ActionParameterValueError",
                "The value for the parameter %1 in the action %2 is invalid.",
                "Warning",
                "Correct the value for the parameter in the request body and resubmit the request if the operation failed.",
            ),
            ActionParameterNotSupported => (
                "ActionParameterNotSupported",
                "The parameter %1 for the action %2 is not supported on the target resource.",
                "Warning",
                "Remove the parameter supplied and resubmit the request if the operation failed.",
            ),
            ActionNotSupported => (
                "ActionNotSupported",
                "The action %1 is not supported by the resource.",
                "Critical",
                "Check the Actions property in the resource for the supported actions.",
            ),
            PropertyUnknown => (
                "PropertyUnknown",
                "The property %1 is not in the list of valid properties for the resource.",
                "Warning",
                "Remove the unknown property from the request body and resubmit the request if the operation failed.",
            ),
            PropertyNotWritable => (
                "PropertyNotWritable",
                "The property %1 is a read-only property and cannot be assigned a value.",
                "Warning",
                "Remove the property from the request body and resubmit the request if the operation failed.",
            ),
            PropertyValueNotInList => (
                "PropertyValueNotInList",
                "The value '%1' for the property %2 is not in the list of acceptable values.",
                "Warning",
                "Choose a value from the enumeration list that the implementation can support and resubmit the request if the operation failed.",
            ),
            PropertyValueTypeError => (
                "PropertyValueTypeError",
                "The value '%1' for the property %2 is not a type that the property can accept.",
                "Warning",
                "Correct the value for the property in the request body and resubmit the request if the operation failed.",
            ),
            PropertyValueFormatError => (
                "PropertyValueFormatError",
                "The value '%1' for the property %2 is not a format that the property can accept.",
                "Warning",
                "Correct the value for the property in the request body and resubmit the request if the operation failed.",
            ),
            PropertyValueConflict => (
                "PropertyValueConflict",
                "The property '%1' could not be written because its value would conflict with the value of the '%2' property.",
                "Warning",
                "None.",
            ),
            PropertyMissing => (
                "PropertyMissing",
                "The property %1 is a required property and must be included in the request.",
                "Warning",
                "Ensure that the property is in the request body and has a valid value and resubmit the request if the operation failed.",
            ),
            MalformedJSON => (
                "MalformedJSON",
                "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
                "Critical",
                "Ensure that the request body is valid JSON and resubmit the request.",
            ),
            InsufficientPrivilege => (
                "InsufficientPrivilege",
                "There are insufficient privileges for the account or credentials associated with the current session to perform the requested operation.",
                "Critical",
                "Either abandon the operation or change the associated access rights and resubmit the request if the operation failed.",
            ),
            NoValidSession => (
                "NoValidSession",
                "There is no valid session established with the implementation.",
                "Critical",
                "Establish a session before attempting any operations.",
            ),
            ServiceTemporarilyUnavailable => (
                "ServiceTemporarilyUnavailable",
                "The service is temporarily unavailable.  Retry in %1 seconds.",
                "Critical",
                "Wait for the indicated retry duration and retry the operation.",
            ),
            PayloadTooLarge => (
                "PayloadTooLarge",
                "The supplied payload exceeds the maximum size supported by the service.",
                "Critical",
                "Check that the supplied payload is correct and supported by this service.",
            ),
            ResourceInStandby => (
                "ResourceInStandby",
                "The request could not be performed because the resource is in standby.",
                "Critical",
                "Ensure that the resource is in the correct power state and resubmit the request.",
            ),
        }
    }
}

/// A Redfish error answer: status, message and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    pub msg: Msg,
    pub args: Vec<String>,
    /// Seconds for a `Retry-After` header (503 only).
    pub retry_after: Option<u32>,
}

impl Error {
    pub fn new(status: u16, msg: Msg, args: &[&str]) -> Error {
        Error {
            status,
            msg,
            args: args.iter().map(|a| a.to_string()).collect(),
            retry_after: None,
        }
    }

    pub fn not_found(kind: &str, name: &str) -> Error {
        Error::new(404, Msg::ResourceNotFound, &[kind, name])
    }

    pub fn unavailable(seconds: u32) -> Error {
        let mut e = Error::new(
            503,
            Msg::ServiceTemporarilyUnavailable,
            &[&seconds.to_string()],
        );
        e.retry_after = Some(seconds);
        e
    }

    /// The `error` body (DSP0266 §9.6.2).
    pub fn body(&self) -> Value {
        let (id, text, severity, resolution) = self.msg.text();
        let mut message = text.to_string();
        // Highest placeholder first, so that %1 does not eat the start of %10.
        for (i, a) in self.args.iter().enumerate().rev() {
            message = message.replace(&format!("%{}", i + 1), a);
        }
        let message_id = format!("{BASE}.{id}");
        json!({
            "error": {
                "code": message_id,
                "message": message,
                "@Message.ExtendedInfo": [{
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": message_id,
                    "Message": message,
                    "MessageArgs": self.args,
                    "Severity": severity,
                    "MessageSeverity": severity,
                    "Resolution": resolution,
                }]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_base_message_and_fills_its_arguments() {
        let b = Error::new(
            400,
            Msg::PropertyValueNotInList,
            &["Floppy", "Boot/BootSourceOverrideTarget"],
        )
        .body();
        let info = &b["error"]["@Message.ExtendedInfo"][0];
        assert_eq!(info["MessageId"], "Base.1.22.1.PropertyValueNotInList");
        assert_eq!(
            info["Message"],
            "The value 'Floppy' for the property Boot/BootSourceOverrideTarget is not in the list of acceptable values."
        );
        assert_eq!(b["error"]["code"], info["MessageId"]);
        let e = Error::unavailable(5);
        assert_eq!((e.status, e.retry_after), (503, Some(5)));
        assert!(
            e.body()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Retry in 5 seconds")
        );
    }
}
