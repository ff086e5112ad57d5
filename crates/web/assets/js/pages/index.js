// `/`: overview, sign-in, registration and, once signed in, where to go.

import { api } from '/assets/js/api.js';
import { initPage, signOut } from '/assets/js/layout.js';
import { getSession, homeFor, isAdmin, safeNext, setFlash, setSession } from '/assets/js/session.js';
import { $, clearFieldErrors, formStatus, h, showFieldErrors } from '/assets/js/ui.js';

const params = new URLSearchParams(location.search);
const next = safeNext(params.get('next'));
const session = getSession();

initPage({ path: '/', requireAuth: false });

const notice = $('#notice');
if (params.get('expired') && !session) {
  notice.textContent = 'Your session has ended. Sign in again to continue.';
  notice.hidden = false;
} else if (next && !session) {
  notice.textContent = 'Sign in to open that page.';
  notice.hidden = false;
}

if (session) {
  $('#forms').hidden = true;
  $('#signed-in').hidden = false;
  $('#signed-in-email').textContent = session.email;
  $('#signed-in-role').textContent = isAdmin(session) ? 'administrator' : 'user';
  const links = isAdmin(session)
    ? [['/dashboard', 'Dashboard'], ['/notifications', 'Notifications'], ['/monitoring', 'Monitoring'], ['/logs', 'Logs']]
    : [['/notifications', 'Your inbox']];
  $('#signed-in-links').replaceChildren(
    ...links.map(([href, label]) => h('a', { class: 'button', href }, label)),
    h('button', { type: 'button', class: 'secondary', onclick: signOut }, 'Sign out'),
  );
}

/** Logs in and keeps the session; returns it. */
async function logIn(email, password) {
  const login = await api('/api/users/login', { method: 'POST', body: { email, password }, auth: false });
  const expiresAt = Date.now() + Math.max(60, Number(login.expiresIn) || 3600) * 1000 - 30000;
  const base = { token: login.accessToken, userId: login.userId, role: login.role, expiresAt, email, firstName: '', lastName: '' };
  setSession(base);
  try {
    const me = await api('/api/users/me');
    const full = { ...base, email: me.email, firstName: me.firstName, lastName: me.lastName };
    setSession(full);
    return full;
  } catch {
    return base;
  }
}

const loginForm = $('#login-form');
loginForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const status = $('#login-status');
  clearFieldErrors(loginForm);
  const email = loginForm.email.value.trim();
  const password = loginForm.password.value;
  if (!email || !password) {
    formStatus(status, 'error', 'Enter your email and password.');
    (email ? loginForm.password : loginForm.email).focus();
    return;
  }
  const button = loginForm.querySelector('button[type="submit"]');
  button.disabled = true;
  formStatus(status, '', 'Signing in…');
  try {
    const s = await logIn(email, password);
    formStatus(status, 'ok', 'Signed in.');
    location.assign(next || homeFor(s));
  } catch (err) {
    formStatus(status, 'error', err.status === 401 ? 'Email or password is incorrect.' : err.message);
    showFieldErrors(loginForm, err);
  } finally {
    button.disabled = false;
  }
});

const regForm = $('#register-form');
regForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const status = $('#register-status');
  clearFieldErrors(regForm);
  const body = {
    firstName: regForm.firstName.value.trim(),
    lastName: regForm.lastName.value.trim(),
    email: regForm.email.value.trim(),
    password: regForm.password.value,
  };
  const phone = regForm.phoneNumber.value.trim();
  if (phone) body.phoneNumber = phone;
  const button = regForm.querySelector('button[type="submit"]');
  button.disabled = true;
  formStatus(status, '', 'Creating your account…');
  try {
    await api('/api/users/register', { method: 'POST', body, auth: false });
    const s = await logIn(body.email, body.password);
    setFlash('registered');
    formStatus(status, 'ok', 'Account created.');
    location.assign(homeFor(s));
  } catch (err) {
    if (err.status === 409) {
      err.fieldErrors = [{ field: 'email', reason: 'An account with this email already exists.' }];
    }
    const rest = showFieldErrors(regForm, err);
    formStatus(status, 'error', err.fieldErrors.length && !rest.length ? 'Please correct the marked fields.' : err.message);
  } finally {
    button.disabled = false;
  }
});
