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

Writes need ``Authorization: Bearer <token>`` when the server has a token, as the Hub does. Repos live in memory
(every commit is kept, so a revision may be a branch or a commit sha). It listens on 127.0.0.1 only.

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


@dataclass
class _Repo:
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

    def log_message(self, fmt, *args):  # quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
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

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _authorized(self) -> bool:
        """Writes need the server's token, as the Hub's do; answers 401 when it is missing or wrong."""
        token = self.server.token
        if token is None or self.headers.get('Authorization', '') == f'Bearer {token}':
            return True
        self._error(401, None, 'Invalid credentials in Authorization header')
        return False

    def _repo(self, repo_id: str, head: bool = False) -> Optional[_Repo]:
        repo = self.server.repos.get(repo_id)
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
        path = unquote(urlparse(self.path).path)
        with self.server.lock:
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
                return self._resolve(m[1], m[2], m[3], head=method == 'HEAD')
        self._error(404, None, f'No route for {method} {path}', head=method == 'HEAD')

    def _create_repo(self):
        if not self._authorized():
            return
        payload = json.loads(self._body() or b'{}')
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get('organization') else payload['name']
        url = f'{self.server.endpoint}/{repo_id}'
        if repo_id in self.server.repos:
            return self._json(409, {'error': 'You already created this model repo', 'url': url})
        sha = _sha1(repo_id.encode())
        self.server.repos[repo_id] = _Repo(commits={sha: {}}, branches={'main': sha})
        self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def _validate_yaml(self):
        content = json.loads(self._body() or b'{}').get('content', '')
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
            'id': repo_id, 'modelId': repo_id, 'sha': sha, 'private': False, 'disabled': False, 'gated': False,
            'tags': ['timm'], 'library_name': 'timm',
            'siblings': [{'rfilename': p} for p in sorted(repo.commits[sha])],
        })

    def _preupload(self, repo_id: str, revision: str):
        if not self._authorized() or self._repo(repo_id) is None:
            return
        payload = json.loads(self._body() or b'{}')
        files = [{'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in payload.get('files', [])]
        self._json(200, {'files': files})

    def _commit(self, repo_id: str, revision: str):
        found = self._revision(repo_id, revision) if self._authorized() else None
        if found is None:
            return
        repo, parent = found
        files = dict(repo.commits[parent])
        summary = ''
        for line in self._body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item['key'], item['value']
            if key == 'header':
                summary = value.get('summary', '')
            elif key == 'file':
                content = value['content']
                files[value['path']] = base64.b64decode(content) if value.get('encoding') == 'base64' else content.encode()
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
        rng = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
        if rng and not head:
            start = int(rng[1])
            end = int(rng[2]) if rng[2] else len(content) - 1
            part = content[start:end + 1]
            headers['Content-Range'] = f'bytes {start}-{start + len(part) - 1}/{len(content)}'
            return self._send(206, part, headers)
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
