//! A JSON body extractor whose rejections are problem+json that name the field.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    response::{IntoResponse, Response},
};
use serde::{de::DeserializeOwned, Serialize};

use crate::problem::{ApiError, FieldError};

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(rejection_to_problem(rej)),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn rejection_to_problem(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            // serde_path_to_error gives "field: reason" in the source chain.
            let text = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            let (field, reason) = match text.split_once(": ") {
                Some((f, r)) if !f.contains(' ') => (f.to_owned(), r.to_owned()),
                _ => (
                    missing_field(&text).unwrap_or_else(|| "body".into()),
                    text.clone(),
                ),
            };
            ApiError::Invalid(vec![FieldError::new(field, clean_reason(&reason))])
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
            detail: format!(
                "The body is not valid JSON: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
        },
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "Send the body as JSON with `Content-Type: application/json`.".into(),
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("The request body is larger than the 1 MiB limit.".into())
            } else {
                ApiError::BadRequest {
                    detail: format!("The body could not be read: {}", e.body_text()),
                }
            }
        }
        other => ApiError::BadRequest {
            detail: other.body_text(),
        },
    }
}

fn missing_field(text: &str) -> Option<String> {
    let start = text.find("missing field `")? + "missing field `".len();
    let end = text[start..].find('`')? + start;
    Some(text[start..end].to_owned())
}

fn clean_reason(reason: &str) -> String {
    // Drop serde's " at line 1 column 42" suffix: the field name says where.
    match reason.find(" at line ") {
        Some(i) => reason[..i].to_owned(),
        None => reason.to_owned(),
    }
}
