//! HTTP endpoints of the users service and their OpenAPI description.

use std::sync::Arc;

use axum::{
    extract::{FromRef, Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use clairon_auth::{AuthContext, Claims, Role};
use clairon_events::{ActionType, Timestamp};
use clairon_http::{
    auth::{AdminOnly, Authenticated},
    paging::{self, Cursor, Page},
    problem::Problem,
    ApiError, ApiJson, ApiResult, FieldError,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    IntoParams, Modify, OpenApi, ToSchema,
};
use uuid::Uuid;

use crate::{
    account::{self, Account},
    validate::{self, field, required},
    NewUser, ProfileUpdate, Users,
};

/// One message for an unknown email and a wrong password, so the answer does
/// not tell which accounts exist.
pub(crate) const BAD_CREDENTIALS: &str = "Email or password is incorrect.";
const TAG: &str = "users";

#[derive(Clone, FromRef)]
struct AppState {
    users: Arc<Users>,
    auth: Arc<AuthContext>,
}

pub(crate) fn router(users: Arc<Users>) -> Router {
    let state = AppState {
        auth: users.auth.clone(),
        users,
    };
    Router::new()
        .route("/api/users/register", post(register))
        .route("/api/users/login", post(login))
        .route("/api/users/logout", post(logout))
        .route("/api/users/me", get(me).put(update_me))
        .route("/api/users", get(list_users))
        .route("/api/users/{userId}", get(get_user))
        .route("/api/users/{userId}/contact", get(get_contact))
        .with_state(state)
}

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    user_id: Uuid,
    #[schema(example = "ann@example.com")]
    email: String,
    first_name: String,
    last_name: String,
    /// `null` when the user gave none.
    #[schema(required = true, example = "+33612345678")]
    phone_number: Option<String>,
    role: Role,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<Account> for User {
    fn from(a: Account) -> Self {
        User {
            user_id: a.user_id,
            email: a.email,
            first_name: a.first_name,
            last_name: a.last_name,
            phone_number: a.phone_number,
            role: a.role,
            created_at: Timestamp::from_millis(a.created_at),
            updated_at: Timestamp::from_millis(a.updated_at),
        }
    }
}

// Fields are optional in the Rust type so that every missing one is reported
// in a single answer rather than the first one only.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegisterRequest {
    /// `local@domain`, at most 254 characters; unique regardless of case.
    #[serde(default)]
    #[schema(required = true, value_type = String, max_length = 254, example = "ann@example.com")]
    email: Option<String>,
    #[serde(default)]
    #[schema(required = true, value_type = String, min_length = 8, max_length = 128)]
    password: Option<String>,
    #[serde(default)]
    #[schema(required = true, value_type = String, min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[serde(default)]
    #[schema(required = true, value_type = String, min_length = 1, max_length = 100)]
    last_name: Option<String>,
    /// `+` and 7 to 15 digits.
    #[serde(default)]
    #[schema(pattern = r"^\+[0-9]{7,15}$", example = "+33612345678")]
    phone_number: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct LoginRequest {
    #[schema(example = "ann@example.com")]
    email: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoginResponse {
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: String,
    /// Seconds until the token expires.
    expires_in: i64,
    user_id: Uuid,
    role: Role,
}

/// Absent fields are left as they are.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateMeRequest {
    #[schema(min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    last_name: Option<String>,
    /// `+` and 7 to 15 digits; `null` or `""` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^\+[0-9]{7,15}$")]
    phone_number: Option<Option<String>>,
    #[schema(min_length = 8, max_length = 128)]
    password: Option<String>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserPage {
    items: Vec<User>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

// Taken as text so that a bad value is a 422 naming the parameter.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// The W3C trace context carried into the events the request causes: the
/// request span's when traced, else the caller's well-formed one, else a new trace.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    Some(clairon_http::trace::event_traceparent(headers))
}

fn registration(body: RegisterRequest) -> ApiResult<NewUser> {
    let mut errors: Vec<FieldError> = Vec::new();
    let email = field(
        &mut errors,
        "email",
        required(body.email).and_then(|v| validate::email(&v)),
    );
    let password = field(
        &mut errors,
        "password",
        required(body.password).and_then(|v| validate::password(&v).map(|()| v)),
    );
    let first_name = field(
        &mut errors,
        "firstName",
        required(body.first_name).and_then(|v| validate::name(&v)),
    );
    let last_name = field(
        &mut errors,
        "lastName",
        required(body.last_name).and_then(|v| validate::name(&v)),
    );
    let phone_number = field(
        &mut errors,
        "phoneNumber",
        body.phone_number.map_or(Ok(None), |v| validate::phone(&v)),
    );
    match (email, password, first_name, last_name, phone_number) {
        (Some(email), Some(password), Some(first_name), Some(last_name), Some(phone_number)) => {
            Ok(NewUser {
                email,
                password,
                first_name,
                last_name,
                phone_number,
            })
        }
        _ => Err(ApiError::Invalid(errors)),
    }
}

fn profile_update(body: UpdateMeRequest) -> ApiResult<ProfileUpdate> {
    let mut errors: Vec<FieldError> = Vec::new();
    let first_name = body
        .first_name
        .map(|v| field(&mut errors, "firstName", validate::name(&v)));
    let last_name = body
        .last_name
        .map(|v| field(&mut errors, "lastName", validate::name(&v)));
    let phone_number = body.phone_number.map(|v| {
        field(
            &mut errors,
            "phoneNumber",
            v.map_or(Ok(None), |p| validate::phone(&p)),
        )
    });
    let password = body
        .password
        .map(|v| field(&mut errors, "password", validate::password(&v).map(|()| v)));
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    // With no errors every present field holds its checked value.
    Ok(ProfileUpdate {
        first_name: first_name.flatten(),
        last_name: last_name.flatten(),
        phone_number: phone_number.flatten(),
        password: password.flatten(),
    })
}

/// The account a token belongs to.
async fn own_account(users: &Users, claims: &Claims) -> ApiResult<Account> {
    let user_id = claims.user_id().ok_or_else(|| {
        ApiError::NotFound("This token does not belong to a user account.".into())
    })?;
    account::find(&users.db.pool, user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("The account of this token no longer exists.".into()))
}

#[utoipa::path(
    post, path = "/api/users/register", tag = TAG,
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created with role USER", body = User),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken (case-insensitive)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, all named", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(users): State<Arc<Users>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, ApiJson<User>)> {
    let new = registration(body)?;
    let account = users
        .create_account(new, Role::User, traceparent(&headers).as_deref())
        .await?;
    Ok((StatusCode::CREATED, ApiJson(account.into())))
}

#[utoipa::path(
    post, path = "/api/users/login", tag = TAG,
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A bearer token", body = LoginResponse),
        (status = 401, description = "Unknown email or wrong password (one answer for both)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or not a string", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn login(
    State(users): State<Arc<Users>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let email = body.email.trim().to_lowercase();
    let found = account::credentials(&users.db.pool, &email).await?;
    let matches = crate::verify_password(
        body.password,
        found.as_ref().map(|c| c.password_hash.clone()),
    )
    .await?;
    let creds = match found {
        Some(c) if matches => c,
        _ => return Err(ApiError::Unauthorized(BAD_CREDENTIALS.into())),
    };
    let issued = users
        .auth
        .tokens
        .issue(&creds.user_id.to_string(), creds.role)?;
    users
        .record_action(
            creds.user_id,
            ActionType::Login,
            "Logged in".into(),
            traceparent(&headers).as_deref(),
        )
        .await?;
    let body = LoginResponse {
        access_token: issued.token,
        token_type: "Bearer".into(),
        expires_in: issued.claims.exp - issued.claims.iat,
        user_id: creds.user_id,
        role: creds.role,
    };
    // A token in a body must not be kept by caches (RFC 6749 §5.1).
    Ok(([(header::CACHE_CONTROL, "no-store")], ApiJson(body)).into_response())
}

#[utoipa::path(
    post, path = "/api/users/logout", tag = TAG,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token is revoked"),
        (status = 401, description = "Missing, invalid, expired or already revoked token", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(users): State<Arc<Users>>,
    headers: HeaderMap,
    Authenticated(claims): Authenticated,
) -> ApiResult<StatusCode> {
    users
        .logout(&claims, traceparent(&headers).as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/users/me", tag = TAG,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = User),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The token belongs to no account", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn me(
    State(users): State<Arc<Users>>,
    Authenticated(claims): Authenticated,
) -> ApiResult<ApiJson<User>> {
    Ok(ApiJson(own_account(&users, &claims).await?.into()))
}

#[utoipa::path(
    put, path = "/api/users/me", tag = TAG,
    security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The updated account", body = User),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The token belongs to no account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, all named", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_me(
    State(users): State<Arc<Users>>,
    headers: HeaderMap,
    Authenticated(claims): Authenticated,
    ApiJson(body): ApiJson<UpdateMeRequest>,
) -> ApiResult<ApiJson<User>> {
    let update = profile_update(body)?;
    let current = own_account(&users, &claims).await?;
    let account = users
        .update_profile(current, update, traceparent(&headers).as_deref())
        .await?;
    Ok(ApiJson(account.into()))
}

#[utoipa::path(
    get, path = "/api/users", tag = TAG,
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "Accounts, newest first", body = UserPage),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_users(
    State(users): State<Arc<Users>>,
    AdminOnly(_admin): AdminOnly,
    Query(params): Query<ListParams>,
) -> ApiResult<ApiJson<UserPage>> {
    let limit = params
        .limit
        .as_deref()
        .map(|s| {
            s.trim().parse::<i64>().map_err(|_| {
                ApiError::invalid(
                    "limit",
                    format!("must be a whole number between 1 and {}", paging::MAX_LIMIT),
                )
            })
        })
        .transpose()?;
    let limit = paging::limit(limit)?;
    let cursor = paging::cursor(params.cursor.as_deref())?;
    // One extra row tells whether another page follows.
    let accounts = users.list(limit + 1, cursor.as_ref()).await?;
    let Page { items, next_cursor } = paging::page(accounts, limit, |a| Cursor {
        time_ms: a.created_at,
        id: a.user_id.to_string(),
    });
    Ok(ApiJson(UserPage {
        items: items.into_iter().map(User::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/api/users/{userId}", tag = TAG,
    security(("bearer" = [])),
    params(("userId" = Uuid, Path, description = "The account's id")),
    responses(
        (status = 200, description = "The account", body = User),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`userId` is not a UUID", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_user(
    State(users): State<Arc<Users>>,
    AdminOnly(_admin): AdminOnly,
    Path(user_id): Path<String>,
) -> ApiResult<ApiJson<User>> {
    let user_id =
        Uuid::parse_str(&user_id).map_err(|_| ApiError::invalid("userId", "must be a UUID"))?;
    account::find(&users.db.pool, user_id)
        .await?
        .map(|a| ApiJson(a.into()))
        .ok_or_else(|| ApiError::NotFound(format!("There is no user {user_id}.")))
}

/// Where to reach a user, for the notification service when an event names no recipient.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContactView {
    email: String,
    phone_number: Option<String>,
    first_name: String,
}

#[utoipa::path(
    get, path = "/api/users/{userId}/contact", tag = TAG,
    security(("bearer" = [])),
    params(("userId" = Uuid, Path, description = "The account's id")),
    responses(
        (status = 200, description = "Contact details (service token or administrator)", body = ContactView),
        (status = 403, description = "Not a service token nor an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_contact(
    State(users): State<Arc<Users>>,
    clairon_http::auth::ServiceCaller(_caller): clairon_http::auth::ServiceCaller,
    Path(user_id): Path<String>,
) -> ApiResult<ApiJson<ContactView>> {
    let user_id =
        Uuid::parse_str(&user_id).map_err(|_| ApiError::invalid("userId", "must be a UUID"))?;
    users
        .contact(user_id)
        .await?
        .map(|c| {
            ApiJson(ContactView {
                email: c.email,
                phone_number: c.phone_number,
                first_name: c.first_name,
            })
        })
        .ok_or_else(|| ApiError::NotFound(format!("There is no user {user_id}.")))
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Clairon users", description = "Accounts, login and logout, profiles."),
    paths(register, login, logout, me, update_me, list_users, get_user, get_contact),
    components(schemas(
        User, ContactView, RegisterRequest, LoginRequest, LoginResponse, UpdateMeRequest, UserPage,
        Problem, FieldError, Role, Timestamp
    )),
    modifiers(&BearerAuth),
    tags((name = "users", description = "Accounts, login and profiles"))
)]
struct ApiDoc;

pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
