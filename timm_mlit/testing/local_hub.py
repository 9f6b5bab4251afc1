"""A small Hugging Face Hub-protocol server on loopback, for offline demos and tests with the real clients.

It speaks the parts of the Hub's HTTP API that ``huggingface_hub`` (and through it timm) uses for model repos:

  * ``POST /api/repos/create``                              create a repo (409 if it exists)
  * ``GET  /api/models/{repo}[/revision/{rev}]``            repo info (sha, files)
  * ``POST /api/validate-yaml``                             checks a model card's YAML metadata
  * ``POST /api/models/{repo}/preupload/{rev}``             answers ``uploadMode: regular`` for every file
  * ``POST /api/models/{repo}/commit/{rev}``                an NDJSON commit with base64 file contents
  * ``HEAD|GET /{repo}/resolve/{rev}/{path}``               downloads, with ``X-Repo-Commit``, ``ETag`` and
                                                            ``Content-Length`` headers, ``Range`` requests, and the
                                                            ``X-Error-Code`` values (RepoNotFound,
                                                            RevisionNotFound, EntryNotFound) the client maps to its
                                                            errors

Writes need ``Authorization: Bearer <token>`` when the server has a token, as the Hub does; so do reads of a repo
created private (without the token it answers 401 RepoNotFound, as the Hub does, so the client says "repository not
found ... private or gated"). Repos live in memory (every commit is kept, so a revision may be a branch or a
commit sha). It listens on 127.0.0.1 only.

Every request is read whole before the repo store is locked, and answered after the lock is released: a client
that stalls while sending or receiving holds only its own thread (which times out after ``REQUEST_TIMEOUT_S``),
never the other requests. A ``Range`` outside the file is answered 416 (RFC 9110, 15.5.17); a malformed request
400, a body over ``MAX_BODY_BYTES`` 413.

    with LocalHubServer(token='hf_local') as hub:
        os.environ['HF_ENDPOINT'] = hub.endpoint   # for processes started from here on
"""
import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple
from urllib.parse import unquote, urlparse

import yaml

__all__ = ['LocalHubServer']


REQUEST_TIMEOUT_S = 30
MAX_BODY_BYTES = 1 << 30
_REPO_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?')


class _BadRequest(ValueError):
    """A request this server refuses with 400 (or the status given)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class _Repo:
    private: bool = False
    commits: Dict[str, Dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    branches: Dict[str, str] = field(default_factory=dict)  # branch -> sha

    def resolve(self, revision: str) -> Optional[str]:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: 'LocalHubServer'
    protocol_version = 'HTTP/1.1'
    timeout = REQUEST_TIMEOUT_S  # a stalled client's socket gives up after this; it never holds the store's lock

    def log_message(self, fmt, *args):  # quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None, head: bool = False):
        """Keep the answer; :meth:`_route` writes it once the store's lock is released."""
        self._answer = (status, body, dict(headers or {}), head)

    def _write_answer(self) -> None:
        status, body, headers, head = self._answer
        self.send_response(status)
        headers.setdefault('Content-Length', str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers=None):
        self._send(status, json.dumps(obj).encode(), {'Content-Type': 'application/json', **(headers or {})})

    def _error(self, status: int, code: Optional[str], message: str, head: bool = False):
        headers = {'Content-Type': 'application/json', 'X-Error-Message': message}
        if code:
            headers['X-Error-Code'] = code
        body = json.dumps({'error': message}).encode()
        self._send(status, body, headers, head=head)

    def _read_body(self) -> bytes:
        """The request body, read before any lock is taken."""
        length = self.headers.get('Content-Length') or '0'
        if not length.isdigit():
            raise _BadRequest(f'Content-Length must be a byte count, got {length!r}')
        if int(length) > MAX_BODY_BYTES:
            raise _BadRequest(f'Request body of {length} bytes is over this server\'s {MAX_BODY_BYTES}', 413)
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise _BadRequest(f'Request body ended after {len(body)} of {length} bytes')
        return body

    def _body(self) -> bytes:
        return self._payload

    def _json_body(self) -> dict:
        try:
            payload = json.loads(self._payload or b'{}')
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _BadRequest(f'The request body is not JSON: {e}')
        if not isinstance(payload, dict):
            raise _BadRequest('The request body must be a JSON object')
        return payload

    def _has_token(self) -> bool:
        token = self.server.token
        return token is None or self.headers.get('Authorization', '') == f'Bearer {token}'

    def _authorized(self) -> bool:
        """Writes need the server's token, as the Hub's do; answers 401 when it is missing or wrong."""
        if self._has_token():
            return True
        self._error(401, None, 'Invalid credentials in Authorization header')
        return False

    def _repo(self, repo_id: str, head: bool = False) -> Optional[_Repo]:
        repo = self.server.repos.get(repo_id)
        if repo is not None and repo.private and not (self.server.token is not None and self._has_token()):
            # the Hub's answer to a private repo without its token: the client then says "private or gated"
            self._error(401, 'RepoNotFound', f'Repository {repo_id} not found', head=head)
            return None
        if repo is None:
            self._error(404, 'RepoNotFound', f'Repository {repo_id} not found', head=head)
        return repo

    def _revision(self, repo_id: str, revision: str, head: bool = False) -> Optional[Tuple[_Repo, str]]:
        """(repo, commit sha) of a branch or sha, or None after answering RepoNotFound / RevisionNotFound."""
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, 'RevisionNotFound', f'Invalid rev id: {revision}', head=head)
            return None
        return repo, sha

    # --- routes ---------------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route('HEAD')

    def do_GET(self):
        self._route('GET')

    def do_POST(self):
        self._route('POST')

    def _route(self, method: str):
        head = method == 'HEAD'
        self._answer = None
        try:
            self._payload = self._read_body() if method == 'POST' else b''
            path = unquote(urlparse(self.path).path)
            with self.server.lock:  # held only while the store is read or changed, never while talking
                self._dispatch(method, path, head)
        except _BadRequest as e:
            self._error(e.status, None, str(e), head=head)
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a field of the wrong kind
            self._error(400, None, f'Malformed request ({e!r})', head=head)
        except OSError:  # the client went away or stalled past the timeout: nobody to answer
            self.close_connection = True
            return
        if self._answer is None:
            self._error(500, None, 'No answer')
        try:
            self._write_answer()
        except OSError:
            self.close_connection = True

    def _dispatch(self, method: str, path: str, head: bool) -> None:
        if method == 'POST' and path == '/api/repos/create':
            return self._create_repo()
        if method == 'POST' and path == '/api/validate-yaml':
            return self._validate_yaml()
        m = re.fullmatch(r'/api/models/(.+?)/(preupload|commit)/([^/]+)', path)
        if method == 'POST' and m:
            return self._preupload(m[1], m[3]) if m[2] == 'preupload' else self._commit(m[1], m[3])
        m = re.fullmatch(r'/api/models/(.+?)(?:/revision/([^/]+))?', path)
        if method == 'GET' and m:
            return self._info(m[1], m[2] or 'main')
        m = re.fullmatch(r'/(.+?)/resolve/([^/]+)/(.+)', path)
        if method in ('GET', 'HEAD') and m:
            return self._resolve(m[1], m[2], m[3], head=head)
        self._error(404, None, f'No route for {method} {path}', head=head)

    def _create_repo(self):
        if not self._authorized():
            return
        payload = self._json_body()
        name, org = payload.get('name'), payload.get('organization')
        repo_id = f'{org}/{name}' if org else name
        if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
            raise _BadRequest(f'Invalid repo name {repo_id!r}: expected NAME or ORG/NAME of letters, digits, ".-_"')
        private = bool(payload.get('private')) or payload.get('visibility') == 'private'  # old / new clients
        if private and self.server.token is None:
            raise _BadRequest('This server has no token, so a private repo could not be read: start it with '
                              'LocalHubServer(token=...) or create a public repo')
        url = f'{self.server.endpoint}/{repo_id}'
        if repo_id in self.server.repos:
            return self._json(409, {'error': 'You already created this model repo', 'url': url})
        sha = _sha1(repo_id.encode())
        self.server.repos[repo_id] = _Repo(private=private, commits={sha: {}}, branches={'main': sha})
        self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def _validate_yaml(self):
        content = self._json_body().get('content', '')
        if not isinstance(content, str):
            raise _BadRequest('"content" must be the card\'s text')
        m = re.match(r'^---\n(.*?)\n---', content, re.S)
        try:
            meta = yaml.safe_load(m[1]) if m else {}
        except yaml.YAMLError as e:
            return self._json(400, {'errors': [{'message': f'Invalid YAML: {e}'}]})
        if not isinstance(meta, (dict, type(None))):
            return self._json(400, {'errors': [{'message': 'The metadata must be a mapping'}]})
        self._json(200, {'warnings': [] if meta else [{'message': 'Empty or missing yaml metadata in repo card'}]})

    def _info(self, repo_id: str, revision: str):
        found = self._revision(repo_id, revision)
        if found is None:
            return
        repo, sha = found
        self._json(200, {
            'id': repo_id, 'modelId': repo_id, 'sha': sha, 'private': repo.private, 'disabled': False, 'gated': False,
            'tags': ['timm'], 'library_name': 'timm',
            'siblings': [{'rfilename': p} for p in sorted(repo.commits[sha])],
        })

    def _preupload(self, repo_id: str, revision: str):
        if not self._authorized() or self._repo(repo_id) is None:
            return
        try:
            files = [{'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False}
                     for f in self._json_body().get('files', [])]
        except (TypeError, KeyError) as e:
            raise _BadRequest(f'"files" must be a list of {{"path": ...}} objects ({e!r})')
        self._json(200, {'files': files})

    def _commit(self, repo_id: str, revision: str):
        found = self._revision(repo_id, revision) if self._authorized() else None
        if found is None:
            return
        repo, parent = found
        files = dict(repo.commits[parent])
        summary = ''
        try:
            lines = self._body().decode().splitlines()
            items = [json.loads(line) for line in lines if line.strip()]
            ops = [(item['key'], item['value']) for item in items]
            if not all(isinstance(value, dict) for _, value in ops):
                raise TypeError('every "value" must be an object')
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as e:
            raise _BadRequest(f'A commit is NDJSON lines of {{"key": ..., "value": ...}} ({e!r})')
        for key, value in ops:
            if key == 'header':
                summary = str(value.get('summary', ''))
            elif key == 'file':
                path = value.get('path')
                if not isinstance(path, str) or not path or path.startswith('/') or '..' in path.split('/') \
                        or '\\' in path:
                    raise _BadRequest(f'Invalid file path {path!r}: expected a relative path without ".."')
                try:
                    content = value['content']
                    files[path] = base64.b64decode(content, validate=True) if value.get('encoding') == 'base64' \
                        else content.encode()
                except (KeyError, AttributeError, ValueError) as e:
                    raise _BadRequest(f'File {path}: "content" must be text or base64 ({e!r})')
            elif key in ('deletedFile', 'deletedFolder'):
                prefix = value['path']
                for p in [p for p in files if p == prefix or p.startswith(prefix.rstrip('/') + '/')]:
                    del files[p]
            else:
                return self._error(400, None, f'This server takes regular uploads only, not {key!r}')
        digest = hashlib.sha1(parent.encode() + summary.encode())
        for p in sorted(files):
            digest.update(p.encode() + _sha1(files[p]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = files
        if revision in repo.branches or revision == 'main':
            repo.branches[revision] = sha
        self._json(200, {'commitUrl': f'{self.server.endpoint}/{repo_id}/commit/{sha}', 'commitOid': sha,
                         'success': True})

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool):
        found = self._revision(repo_id, revision, head=head)
        if found is None:
            return
        repo, sha = found
        content = repo.commits[sha].get(filename)
        if content is None:
            return self._error(404, 'EntryNotFound', f'{filename} does not exist at {revision}', head=head)
        headers = {
            'X-Repo-Commit': sha,
            'ETag': f'"{hashlib.sha256(content).hexdigest()}"',
            'Accept-Ranges': 'bytes',
            'Content-Type': 'application/octet-stream',
        }
        rng = re.fullmatch(r'bytes=(\d*)-(\d*)', self.headers.get('Range', '').strip())
        if rng and rng[1] and rng[2] and int(rng[2]) < int(rng[1]):
            rng = None  # not a valid range-spec: ignored, the whole file is sent (RFC 9110, 14.2)
        if rng and (rng[1] or rng[2]) and not head:
            size = len(content)
            if rng[1]:
                start = int(rng[1])
                end = min(int(rng[2]), size - 1) if rng[2] else size - 1
            else:  # a suffix: the last N bytes
                start, end = max(size - int(rng[2]), 0), size - 1
            if start >= size or end < start:  # past the end, or an empty suffix
                self._error(416, None, f'Range {self.headers["Range"]} is outside the {size} bytes of {filename}')
                self._answer[2]['Content-Range'] = f'bytes */{size}'
                return
            headers['Content-Range'] = f'bytes {start}-{end}/{size}'
            return self._send(206, content[start:end + 1], headers)
        headers['Content-Length'] = str(len(content))
        self._send(200, content, headers, head=head)


class LocalHubServer(ThreadingHTTPServer):
    """``with LocalHubServer() as hub: ...`` serves on ``hub.endpoint`` (127.0.0.1, a free port) in a thread."""
    daemon_threads = True

    def __init__(self, token: Optional[str] = None, port: int = 0):
        super().__init__(('127.0.0.1', port), _Handler)
        self.token = token
        self.repos: Dict[str, _Repo] = {}
        self.lock = threading.Lock()
        self.endpoint = f'http://127.0.0.1:{self.server_address[1]}'
        self._thread: Optional[threading.Thread] = None

    def start(self) -> 'LocalHubServer':
        self._thread = threading.Thread(target=self.serve_forever, name='local-hub', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> 'LocalHubServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        """The files of a repo at a revision (for tests and the demo)."""
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])
