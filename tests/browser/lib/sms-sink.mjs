// A local SMS gateway for CLAIRON_SMS_URL: keeps what it receives and answers
// with the status the test chooses (200 accepted, 500 to make deliveries fail).

import { createServer } from 'node:http';

export class SmsSink {
  static async start() {
    const sink = new SmsSink();
    await new Promise((res) => sink.server.listen(0, '127.0.0.1', res));
    const { port } = sink.server.address();
    sink.url = `http://127.0.0.1:${port}/sms`;
    return sink;
  }

  constructor() {
    this.status = 200;
    /** @type {{body:any, headers:object}[]} */
    this.received = [];
    this.server = createServer((req, res) => {
      let raw = '';
      req.on('data', (c) => {
        raw += c;
      });
      req.on('end', () => {
        let body = null;
        try {
          body = JSON.parse(raw);
        } catch {
          body = raw;
        }
        this.received.push({ body, headers: req.headers, status: this.status });
        res.writeHead(this.status, { 'Content-Type': 'application/json' });
        res.end(this.status < 300 ? '{"accepted":true}' : '{"error":"gateway down"}');
      });
    });
  }

  async stop() {
    await new Promise((res) => this.server.close(res));
  }
}
