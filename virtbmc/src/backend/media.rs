//! A machine's virtual CD: which image the BMC was asked to insert, and whether the machine
//! can read it yet. A backend that copies the image first (an import into a volume) reports
//! the copy's progress and failure here, so that the protocol side tells the truth rather
//! than what was asked.

use std::future::Future;
use std::pin::Pin;

/// The medium in the drive, or on its way there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Medium {
    /// The URL the image is read from, as given.
    pub image: String,
    pub state: MediaState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaState {
    /// The machine sees the image in its drive.
    Inserted,
    /// The image is still being fetched; `progress` as the backend reports it ("42%").
    Importing { progress: Option<String> },
    /// The image could not be fetched or attached; the drive stays empty.
    Failed { reason: String },
}

impl Medium {
    pub fn inserted(&self) -> bool {
        self.state == MediaState::Inserted
    }

    /// The last path segment of the URL, without query: what a person recognises.
    pub fn image_name(&self) -> &str {
        let path = self.image.split(['?', '#']).next().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// This backend has no virtual media.
    #[error("virtual media is not supported by this backend")]
    Unsupported,
    #[error("no machine named {0}")]
    NoMachine(String),
    /// The image URL is not one the backend can fetch.
    #[error("image URL {0:?} is not an http or https URL")]
    BadImage(String),
    #[error("backend failed: {0}")]
    Failed(String),
}

pub type MediaFuture = Pin<Box<dyn Future<Output = Result<(), MediaError>> + Send + 'static>>;

/// Whether `url` is an absolute http or https URL with a host: the only images a machine's
/// drive can be pointed at (the importer fetches over HTTP). Whitespace and control
/// characters are refused too, since the URL travels in headers, logs and object specs.
pub fn valid_image(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_images() {
        assert!(valid_image("http://10.0.0.1:8080/boot.iso"));
        assert!(valid_image("https://example.com/a/b.iso?x=1"));
        for bad in [
            "ftp://h/x.iso",
            "nfs://h/x.iso",
            "file:///x.iso",
            "http:///x.iso",
            "https://",
            "http://h/a b.iso",
            "boot.iso",
            "",
        ] {
            assert!(!valid_image(bad), "{bad}");
        }
    }

    #[test]
    fn image_name_is_the_last_path_segment() {
        let m = Medium {
            image: "https://h/images/boot.iso?token=x".into(),
            state: MediaState::Inserted,
        };
        assert_eq!(m.image_name(), "boot.iso");
        assert!(m.inserted());
    }
}
