//! JSON:API plumbing shared by every resource: request bodies with a size limit,
//! input documents, pagination, and response documents.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.api+json";
/// The largest body accepted on CRUD routes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest a request body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

/// Reads the whole body, refusing more than `limit` bytes before buffering them.
pub async fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::BadRequest(format!("cannot read the request body: {err}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses JSON: syntax errors are 400, well-formed JSON of the wrong shape is 422.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("invalid document: {err}"))
        }
        _ => ApiError::BadRequest(format!("malformed JSON: {err}")),
    })
}

fn contains_escaped_nul(body: &[u8]) -> bool {
    body.windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].eq_ignore_ascii_case(b"0000"))
}

/// A JSON:API request document whose body was at most [`MAX_BODY_BYTES`].
pub struct JsonApiBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonApiBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let body =
                tokio::time::timeout(BODY_TIMEOUT, read_body(&req, &mut payload, MAX_BODY_BYTES))
                    .await
                    .map_err(|_| {
                        ApiError::RequestTimeout(format!(
                            "the request body did not arrive within {}s",
                            BODY_TIMEOUT.as_secs()
                        ))
                    })??;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::BadRequest(
                    "the request needs a JSON:API document body".into(),
                ));
            }
            if contains_escaped_nul(&body) {
                // PostgreSQL text cannot hold NUL, and no attribute needs one.
                return Err(ApiError::Unprocessable(
                    "strings must not contain NUL (\\u0000) characters".into(),
                ));
            }
            parse_json(&body).map(JsonApiBody)
        })
    }
}

/// `{"data": {...}}` of a create or update request.
#[derive(Deserialize)]
pub struct InputDocument<A, R = NoRelationships> {
    pub data: InputResource<A, R>,
}

#[derive(Deserialize)]
pub struct InputResource<A, R> {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
    pub attributes: Option<A>,
    pub relationships: Option<R>,
}

#[derive(Deserialize, Default)]
pub struct NoRelationships {}

/// `"relationships": {"x": {"data": {...} | null}}`: `data: None` means "set to null".
#[derive(Deserialize)]
pub struct RelationshipInput {
    pub data: Option<ResourceIdentifier>,
}

#[derive(Deserialize)]
pub struct ResourceIdentifier {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl<A: Default, R: Default> InputResource<A, R> {
    /// Checks the resource type (409 on mismatch, as JSON:API prescribes) and, for
    /// updates, that a body id matches the URL's.
    pub fn accept(self, kind: &str, url_id: Option<&str>) -> Result<(A, R), ApiError> {
        if self.kind != kind {
            return Err(ApiError::Conflict(format!(
                "expected a resource of type `{kind}`, got `{}`",
                self.kind
            )));
        }
        // An empty id is no id (some clients always send the member).
        let body_id = self.id.as_deref().filter(|id| !id.is_empty());
        if let (Some(body_id), Some(url_id)) = (body_id, url_id) {
            if body_id != url_id {
                return Err(ApiError::Conflict(format!(
                    "the body's id `{body_id}` does not match the URL's `{url_id}`"
                )));
            }
        }
        Ok((
            self.attributes.unwrap_or_default(),
            self.relationships.unwrap_or_default(),
        ))
    }
}

/// The value of query parameter `name` (the last one if repeated); 400 for a query
/// string that does not parse.
pub fn query_param(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    let value = query_pairs(req)?
        .into_iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value);
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err(ApiError::BadRequest(format!("{name} must not contain NUL")));
    }
    Ok(value)
}

fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|err| ApiError::BadRequest(format!("malformed query string: {err}")))
}

/// 422 for a `filter[…]` or `search[…]` parameter the list does not implement: a
/// filter silently ignored would return everything (and a script acting on the
/// result would act on everything).
pub fn refuse_unknown_filters(req: &HttpRequest, known: &[&str]) -> Result<(), ApiError> {
    for (key, _) in query_pairs(req)? {
        let is_filter = key.starts_with("filter[") || key.starts_with("search[");
        if is_filter && !known.contains(&key.as_str()) {
            return Err(ApiError::Unprocessable(format!(
                "{key} is not supported on this list (supported: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Validated `page[number]` / `page[size]`.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub number: i64,
    pub size: i64,
}

impl Page {
    pub fn offset(&self) -> i64 {
        (self.number - 1).saturating_mul(self.size)
    }

    pub fn from_query(req: &HttpRequest) -> Result<Page, ApiError> {
        let mut page = Page {
            number: 1,
            size: DEFAULT_PAGE_SIZE,
        };
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|err| ApiError::BadRequest(format!("malformed query string: {err}")))?;
        for (key, value) in pairs.into_inner() {
            let parsed = || {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "{key} must be a whole number of at least 1, got `{value}`"
                        ))
                    })
            };
            match key.as_str() {
                "page[number]" => page.number = parsed()?.min(1_000_000_000),
                "page[size]" => page.size = parsed()?.min(MAX_PAGE_SIZE),
                _ => {}
            }
        }
        Ok(page)
    }

    pub fn meta(&self, total_count: i64) -> Value {
        let total_pages = ((total_count + self.size - 1) / self.size).max(1);
        json!({
            "pagination": {
                "current-page": self.number,
                "page-size": self.size,
                "prev-page": (self.number > 1).then(|| self.number - 1),
                "next-page": (self.number < total_pages).then(|| self.number + 1),
                "total-pages": total_pages,
                "total-count": total_count,
            }
        })
    }
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn optional_timestamp(at: Option<DateTime<Utc>>) -> Value {
    at.map(timestamp).map_or(Value::Null, Value::String)
}

pub fn relationship(kind: &str, id: Option<&str>) -> Value {
    match id {
        Some(id) => json!({"data": {"id": id, "type": kind}}),
        None => json!({"data": null}),
    }
}

#[derive(Serialize)]
struct DataDocument<T> {
    data: T,
}

#[derive(Serialize)]
struct ListDocument<T> {
    data: Vec<T>,
    meta: Value,
}

/// A single-resource document; views may be `serde_json::Value`s or typed structs
/// (typed ones serialise without building a tree first, for hot routes).
pub fn document<T: Serialize>(status: actix_web::http::StatusCode, data: T) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(CONTENT_TYPE)
        .json(DataDocument { data })
}

pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    document(actix_web::http::StatusCode::OK, data)
}

pub fn list<T: Serialize>(data: Vec<T>, page: Page, total_count: i64) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .json(ListDocument {
            data,
            meta: page.meta(total_count),
        })
}

/// `{"data": {"id": …, "type": …}}`
#[derive(Serialize)]
pub struct Related<'a> {
    pub data: Identifier<'a>,
}

#[derive(Serialize)]
pub struct Identifier<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl<'a> Related<'a> {
    pub fn to(kind: &'static str, id: &'a str) -> Self {
        Related {
            data: Identifier { id, kind },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_meta_counts_pages() {
        let page = Page {
            number: 2,
            size: 20,
        };
        let meta = page.meta(45);
        assert_eq!(meta["pagination"]["total-pages"], 3);
        assert_eq!(meta["pagination"]["prev-page"], 1);
        assert_eq!(meta["pagination"]["next-page"], 3);
        let empty = Page {
            number: 1,
            size: 20,
        }
        .meta(0);
        assert_eq!(empty["pagination"]["total-pages"], 1);
        assert_eq!(empty["pagination"]["next-page"], Value::Null);
    }

    #[test]
    fn json_errors_are_classified() {
        assert!(matches!(
            parse_json::<Value>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wants {
            data: u32,
        }
        assert!(matches!(
            parse_json::<Wants>(b"{\"data\":\"x\"}"),
            Err(ApiError::Unprocessable(_))
        ));
    }
}
