//! discovery.k8s.io/v1 EndpointSlice rules of the real apiserver
//! (`pkg/apis/discovery/v1/defaults.go`, `pkg/apis/discovery/validation`): port defaults, the
//! address type is required and immutable, and every endpoint has addresses of that type.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::status::ApiError;

/// Endpoints per slice and addresses per endpoint the validation allows.
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;

/// `SetDefaults_EndpointPort`: name "" and protocol TCP.
pub fn default(obj: &mut Value) {
    if let Some(ports) = obj["ports"].as_array_mut() {
        for p in ports {
            if p.get("name").is_none() {
                p["name"] = json!("");
            }
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
        }
    }
}

fn invalid(obj: &Value, field: &str, cause: &str) -> ApiError {
    ApiError::invalid(
        Kind::EndpointSlice.info(),
        obj["metadata"]["name"].as_str().unwrap_or(""),
        field,
        cause,
    )
}

/// `ValidateEndpointSliceCreate`.
pub fn validate(obj: &Value) -> Result<(), ApiError> {
    let at = obj["addressType"].as_str().unwrap_or("");
    let valid_address: fn(&str) -> bool = match at {
        "" => return Err(invalid(obj, "addressType", "Required value")),
        "IPv4" => |a| a.parse::<Ipv4Addr>().is_ok(),
        "IPv6" => |a| a.parse::<Ipv6Addr>().is_ok(),
        "FQDN" => |a| !a.is_empty() && a.len() <= 253,
        other => {
            return Err(invalid(
                obj,
                "addressType",
                &format!(
                    "Unsupported value: \"{other}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                ),
            ));
        }
    };
    let endpoints = obj["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(invalid(
            obj,
            "endpoints",
            &format!(
                "Too many: {}: must have at most {MAX_ENDPOINTS} items",
                endpoints.len()
            ),
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let addresses = e["addresses"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if addresses.is_empty() {
            return Err(invalid(
                obj,
                &field,
                "Required value: must contain at least 1 address",
            ));
        }
        if addresses.len() > MAX_ADDRESSES {
            return Err(invalid(
                obj,
                &field,
                &format!(
                    "Too many: {}: must have at most {MAX_ADDRESSES} items",
                    addresses.len()
                ),
            ));
        }
        for (j, a) in addresses.iter().enumerate() {
            let s = a.as_str().unwrap_or("");
            if !valid_address(s) {
                return Err(invalid(
                    obj,
                    &format!("{field}[{j}]"),
                    &format!("Invalid value: \"{s}\": must be a valid {at} address"),
                ));
            }
        }
    }
    Ok(())
}

/// `ValidateEndpointSliceUpdate`: the address type cannot change.
pub fn validate_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    if old["addressType"] != new["addressType"] {
        return Err(invalid(
            new,
            "addressType",
            &format!("Invalid value: {}: field is immutable", new["addressType"]),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_the_type() {
        let slice = |at: &str, addr: &str| json!({"metadata": {"name": "s"}, "addressType": at, "endpoints": [{"addresses": [addr]}]});
        assert!(validate(&slice("IPv4", "10.0.0.1")).is_ok());
        assert!(validate(&slice("IPv6", "fd00::1")).is_ok());
        assert_eq!(validate(&slice("IPv4", "fd00::1")).unwrap_err().code, 422);
        assert_eq!(validate(&slice("", "10.0.0.1")).unwrap_err().code, 422);
        assert_eq!(validate(&slice("IPX", "10.0.0.1")).unwrap_err().code, 422);
        let empty = json!({"addressType": "IPv4", "endpoints": [{"addresses": []}]});
        assert_eq!(validate(&empty).unwrap_err().code, 422);
        assert_eq!(
            validate_update(&slice("IPv4", "10.0.0.1"), &slice("IPv6", "fd00::1"))
                .unwrap_err()
                .code,
            422
        );
    }
}
