// data.js: the disk key and the data chunks, exactly as media/crypto.py and media/viewer.py make them.
//   passphrase → NFKC, upper case, A-Z 0-9 only → PBKDF2-HMAC-SHA256 (wrap.salt, wrap.iterations) → AES-GCM
//   key → decrypt wrap.wrapped (AAD "hakobune-media-v1 passphrase <disk id>") → disk key (32 bytes)
//   chunk <name> → HKDF-SHA256(disk key, salt = disk id, info "hakobune-media-v1 viewer <name>") →
//   AES-GCM decrypt (nonce = first 12 bytes, AAD = name) → gunzip → JSON.
// Chunks are scripts under viewer/d/ that call hakobuneData(name, base64): a page on file:// may load
// sibling scripts but may not fetch() them.

const LABEL = 'hakobune-media-v1';
const CHUNK_NAME = /^[a-z][0-9]{0,8}$/;

class ViewerError extends Error {
  constructor(kind, detail) {
    super(kind);
    this.kind = kind; // 'passphrase' | 'wrap' | 'missing' | 'corrupt' | 'unsupported'
    this.detail = detail || '';
  }
}

const utf8 = (s) => new TextEncoder().encode(s);

function fromBase64(text) {
  if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(text);
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function normalizePassphrase(text) {
  return text.normalize('NFKC').toUpperCase().replace(/[^A-Z0-9]/g, '');
}

// Trusted Types: the only script URLs this page can make are its own data chunks.
const scriptPolicy = window.trustedTypes
  ? window.trustedTypes.createPolicy('hakobune-viewer', {
    createScriptURL(url) {
      if (!/^viewer\/d\/[a-z][0-9]{0,8}\.js$/.test(url)) throw new TypeError('not a viewer data chunk');
      return url;
    },
  })
  : { createScriptURL: (url) => url };

class Disk {
  constructor(config) {
    this.config = config;
    this.key = null; // HKDF CryptoKey (not extractable)
    this.pending = new Map();
    this.cache = new Map(); // summary chunks, most recently used last
    this.stats = { load: 0, decode: 0, decrypt: 0, inflate: 0, parse: 0 }; // ms summed over chunks
    window.hakobuneData = (name, b64) => {
      const p = this.pending.get(name);
      if (p) {
        this.pending.delete(name);
        p.resolve(b64);
      }
    };
  }

  /** Unwrap the disk key; ViewerError('passphrase') when the passphrase does not open it. */
  async unlock(passphrase) {
    if (!window.crypto || !crypto.subtle || typeof DecompressionStream !== 'function') {
      throw new ViewerError('unsupported');
    }
    const wrap = this.config.wrap || {};
    const iterations = wrap.iterations;
    if (wrap.kdf !== 'PBKDF2-SHA256' || !Number.isInteger(iterations) || iterations < 100000 || iterations > 10000000) {
      throw new ViewerError('wrap');
    }
    const normalized = normalizePassphrase(passphrase);
    if (!normalized) throw new ViewerError('passphrase');
    let salt;
    let nonce;
    let wrapped;
    try {
      [salt, nonce, wrapped] = [fromBase64(wrap.salt), fromBase64(wrap.nonce), fromBase64(wrap.wrapped)];
    } catch (e) {
      throw new ViewerError('wrap');
    }
    const subtle = crypto.subtle;
    const base = await subtle.importKey('raw', utf8(normalized), 'PBKDF2', false, ['deriveBits']);
    const bits = await subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, base, 256);
    const kek = await subtle.importKey('raw', bits, 'AES-GCM', false, ['decrypt']);
    let diskKey;
    try {
      diskKey = new Uint8Array(await subtle.decrypt(
        { name: 'AES-GCM', iv: nonce, additionalData: utf8(`${LABEL} passphrase ${this.config.disk_id}`) },
        kek,
        wrapped,
      ));
    } catch (e) {
      throw new ViewerError('passphrase');
    }
    if (diskKey.length !== 32) throw new ViewerError('passphrase');
    this.key = await subtle.importKey('raw', diskKey, 'HKDF', false, ['deriveKey']);
    diskKey.fill(0);
  }

  lock() {
    this.key = null;
    this.cache.clear();
    for (const p of this.pending.values()) p.reject(new ViewerError('locked'));
    this.pending.clear();
  }

  /** The base64 payload of chunk `name`, by adding its script element. */
  load(name) {
    return new Promise((resolve, reject) => {
      if (!CHUNK_NAME.test(name)) {
        reject(new ViewerError('corrupt', name));
        return;
      }
      this.pending.set(name, { resolve, reject });
      const s = document.createElement('script');
      s.src = scriptPolicy.createScriptURL(`${this.config.data}${name}.js`);
      s.onerror = () => {
        s.remove();
        this.pending.delete(name);
        reject(new ViewerError('missing', name));
      };
      s.onload = () => {
        s.remove();
        if (this.pending.has(name)) { // the file ran but did not deliver this chunk
          this.pending.delete(name);
          reject(new ViewerError('corrupt', name));
        }
      };
      document.head.appendChild(s);
    });
  }

  /** The JSON value of chunk `name`; ViewerError('missing' | 'corrupt') when it cannot be had. */
  async open(name) {
    const stats = this.stats;
    let t = performance.now();
    const b64 = await this.load(name);
    const key = this.key;
    if (key === null) throw new ViewerError('locked');
    let bytes;
    const lap = () => {
      const now = performance.now();
      const ms = now - t;
      t = now;
      return ms;
    };
    stats.load += lap();
    try {
      bytes = fromBase64(b64);
    } catch (e) {
      throw new ViewerError('corrupt', name);
    }
    stats.decode += lap();
    if (bytes.length < 28) throw new ViewerError('corrupt', name);
    const subtle = crypto.subtle;
    const aes = await subtle.deriveKey(
      { name: 'HKDF', hash: 'SHA-256', salt: utf8(this.config.disk_id), info: utf8(`${LABEL} viewer ${name}`) },
      key,
      { name: 'AES-GCM', length: 256 },
      false,
      ['decrypt'],
    );
    let plain;
    try {
      plain = await subtle.decrypt({ name: 'AES-GCM', iv: bytes.subarray(0, 12), additionalData: utf8(name) }, aes, bytes.subarray(12));
    } catch (e) {
      throw new ViewerError('corrupt', name);
    }
    stats.decrypt += lap();
    let text;
    try {
      const gunzip = new DecompressionStream('gzip');
      const writer = gunzip.writable.getWriter();
      writer.write(new Uint8Array(plain)).catch(() => {}); // a failure surfaces on the reading side
      writer.close().catch(() => {});
      text = new TextDecoder('utf-8', { fatal: true }).decode(await new Response(gunzip.readable).arrayBuffer());
      stats.inflate += lap();
      const value = JSON.parse(text);
      stats.parse += lap();
      return value;
    } catch (e) {
      throw new ViewerError('corrupt', name);
    }
  }

  /** Summary chunk `n`, keeping the last few decrypted (a desk often goes back and forth). */
  async summaries(n) {
    const name = `s${String(n).padStart(5, '0')}`;
    let p = this.cache.get(name);
    if (p === undefined) {
      p = this.open(name);
      p.catch(() => this.cache.delete(name));
    } else {
      this.cache.delete(name);
    }
    this.cache.set(name, p);
    while (this.cache.size > 4) this.cache.delete(this.cache.keys().next().value);
    return p;
  }
}
