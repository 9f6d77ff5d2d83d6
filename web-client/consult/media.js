/**
 * Local capture: camera and microphone with fallbacks, and screen share.
 */

/** The camera size a consult asks for unless told otherwise: 720p (sent as simulcast). */
export const DEFAULT_CAMERA = { width: 1280, height: 720 };

/**
 * Opens the camera (ideally at `size`, e.g. a smaller one for a slow clinic computer) and
 * the microphone, falling back to the microphone alone and then to no media at all. Never
 * rejects.
 * @param {{width: number, height: number}} [size]
 * @returns {Promise<{stream: MediaStream, notice: string | null}>} `notice` is the i18n key
 *   of what the user should know about a fallback, or null.
 */
export async function openLocalMedia(size = DEFAULT_CAMERA) {
  const camera = { width: { ideal: size.width }, height: { ideal: size.height }, frameRate: { ideal: 30 } };
  const devices = navigator.mediaDevices;
  if (devices?.getUserMedia) {
    try {
      return { stream: await devices.getUserMedia({ video: camera, audio: true }), notice: null };
    } catch (err) {
      console.warn('camera+microphone unavailable:', err.name, err.message);
    }
    try {
      return { stream: await devices.getUserMedia({ audio: true }), notice: 'notice.audioOnly' };
    } catch (err) {
      console.warn('microphone unavailable:', err.name, err.message);
    }
  }
  return { stream: new MediaStream(), notice: 'notice.noMedia' };
}

/** Whether this browser can share a screen. */
export function canShareScreen() {
  return typeof navigator.mediaDevices?.getDisplayMedia === 'function';
}

/**
 * Asks the user for a screen, window or tab to share (video only).
 * @returns {Promise<{track: MediaStreamTrack, stream: MediaStream}>}
 */
export async function openScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const [track] = stream.getVideoTracks();
  // Favour legibility (documents, imaging) over motion.
  track.contentHint = 'detail';
  return { track, stream };
}
