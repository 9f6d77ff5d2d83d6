/**
 * The little SDP reading the consult page needs: which stream/track (`a=msid`) each media
 * section (`a=mid`) carries.
 */

/**
 * @typedef {object} MediaSection
 * @property {string} mid
 * @property {string} kind       `audio`, `video` or `application`
 * @property {boolean} sending   the description's author sends on it (port ≠ 0 and
 *                               direction `sendrecv` or `sendonly`)
 * @property {string | null} streamId  first part of `a=msid`
 * @property {string | null} trackId   second part of `a=msid`
 */

/**
 * The media sections of an SDP, by mid.
 * @param {string} sdp
 * @returns {Map<string, MediaSection>}
 */
export function mediaSections(sdp) {
  const sections = new Map();
  for (const block of sdp.split(/\r?\n(?=m=)/).slice(1)) {
    const lines = block.split(/\r?\n/);
    const [kind, port] = lines[0].slice(2).split(' ');
    let mid = null;
    let direction = 'sendrecv';
    let msid = null;
    for (const line of lines) {
      if (line.startsWith('a=mid:')) mid = line.slice('a=mid:'.length).trim();
      else if (/^a=(sendrecv|sendonly|recvonly|inactive)$/.test(line.trim())) direction = line.trim().slice(2);
      else if (line.startsWith('a=msid:') && !msid) msid = line.slice('a=msid:'.length).trim().split(/\s+/);
    }
    if (mid === null) continue;
    sections.set(mid, {
      mid,
      kind,
      sending: port !== '0' && (direction === 'sendrecv' || direction === 'sendonly'),
      streamId: msid?.[0] ?? null,
      trackId: msid?.[1] ?? null,
    });
  }
  return sections;
}
