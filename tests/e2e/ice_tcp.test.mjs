// Restrictive networks (issue 6): a clinic whose network lets no UDP through reaches the SFU
// over ICE-TCP (RFC 6544: the server's passive TCP candidate on the media port, RFC 4571
// framing) and both sides decode each other. The firewall is stood in for in the clinic's
// page: the server's UDP candidate is removed from every description it applies, so its ICE
// checks can only reach the server over TCP.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { launchBrowser, openParticipant, expectMediaFrom, selectedPairs } from './lib/browser.mjs';
import { safeJson } from './lib/server.mjs';

const ROOM = 'consult-ice-tcp';

/** In the page: drop the server's UDP candidates from every remote description. */
function noUdpToServer() {
  const apply = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (description) {
    const sdp = description.sdp
      .split('\r\n')
      .filter((line) => !/^a=candidate:\S+ \d+ udp /i.test(line))
      .join('\r\n');
    if (!/^a=candidate:\S+ \d+ tcp /im.test(sdp)) throw new Error('the server offered no TCP candidate');
    return apply.call(this, { type: description.type, sdp });
  };
}
let server;
let browser;
let clinic;
let specialist;

before(async () => {
  server = await startServer({ name: 'ice_tcp' });
  browser = await launchBrowser();
}, { timeout: 90_000 });

after(async () => {
  await clinic?.close();
  await specialist?.close();
  await browser?.close();
  await server?.stop();
});

test('a clinic without UDP connects over ICE-TCP to the media port and both sides decode', { timeout: 90_000 }, async () => {
  clinic = await openParticipant(browser, server, { room: ROOM, identity: 'dr-clinic', role: 'clinic', initScript: noUdpToServer });
  specialist = await openParticipant(browser, server, { room: ROOM, identity: 'dr-specialist', role: 'specialist' });
  await Promise.all([
    expectMediaFrom(clinic, 'dr-specialist', { timeout: 30_000 }),
    expectMediaFrom(specialist, 'dr-clinic', { timeout: 30_000 }),
  ]);
  const tcp = await selectedPairs(clinic);
  assert.equal(tcp.length, 2, `publisher and subscriber connections: ${safeJson(tcp)}`);
  for (const p of tcp) {
    assert.equal(p.local.protocol, 'tcp', safeJson(tcp));
    assert.equal(p.remote.protocol, 'tcp', safeJson(tcp));
    assert.equal(p.remote.port, server.mediaPort, safeJson(tcp));
  }
  // The other participant still uses UDP.
  for (const p of await selectedPairs(specialist)) assert.equal(p.local.protocol, 'udp', safeJson(p));
  await expectMediaFrom(specialist, 'dr-clinic', { minFrames: 20, timeout: 10_000 });
  await clinic.screenshot('consult-ice-tcp-clinic');
});
