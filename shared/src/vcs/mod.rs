//! Talking to version control systems. The providers themselves come with the poller;
//! what the API needs now is parsing repository URLs.

pub mod repo_url;

pub use repo_url::RepoUrl;
