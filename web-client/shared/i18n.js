/**
 * Bilingual labels (English and Simplified Chinese) for the medrelay pages.
 *
 * Static markup names its labels with attributes and is re-rendered by
 * `applyTranslations()`:
 *   data-i18n="key"              → textContent
 *   data-i18n-aria-label="key"   → aria-label
 *   data-i18n-placeholder="key"  → placeholder
 *   data-i18n-title="key"        → title
 * Dynamic text calls `t(key, params)` and re-renders from an `onLanguageChange` listener.
 */

/** @typedef {'en' | 'zh-CN'} Language */

/** The label tables. Every key must exist in both. `{name}` marks a parameter. */
export const STRINGS = {
  en: {
    'app.name': 'medrelay',
    'lang.label': 'Language',

    'landing.title': 'medrelay — remote consultations',
    'landing.intro':
      'A consult is a video room shared by the clinic, the remote specialist and, when needed, the ambulance crew. Each participant opens their own link.',
    'landing.howto.heading': 'How to open a consult',
    'landing.howto.link': 'The link has the form /consult/#room=ROOM&token=TOKEN.',
    'landing.howto.token':
      'The token is issued by your organisation for one room and one person; it is part of the link after "#" and is never sent to the server as part of the page address.',
    'landing.howto.browser': 'Use a recent Chrome, Edge, Firefox or Safari, and allow the camera and microphone when asked.',
    'landing.form.heading': 'Build a consult link',
    'landing.form.room': 'Room',
    'landing.form.token': 'Token',
    'landing.form.build': 'Create link',
    'landing.form.open': 'Open consult',
    'landing.form.result': 'Consult link',
    'landing.form.missing': 'Enter both the room and the token.',

    'consult.title': 'Consult',
    'consult.participants': 'Participants',
    'consult.you': 'You',
    'consult.screen': '{name} — screen',
    'consult.yourScreen': 'Your screen',

    'status.connecting': 'Connecting…',
    'status.joined': 'In consult room “{room}”',
    'status.left': 'You left the consult.',
    'status.disconnected': 'Disconnected from the server.',
    'status.reconnecting': 'Reconnecting…',
    'status.failed': 'Could not join the consult.',

    'quality.label': 'Connection:',
    'quality.good': 'Good',
    'quality.fair': 'Fair',
    'quality.poor': 'Poor',
    'quality.disconnected': 'Disconnected',

    'role.clinic': 'Clinic',
    'role.specialist': 'Specialist',
    'role.crew': 'Ambulance crew',
    'role.observer': 'Observer',
    'role.unknown': 'Participant',

    'controls.label': 'Call controls',
    'controls.mute': 'Mute microphone',
    'controls.unmute': 'Unmute microphone',
    'controls.cameraOff': 'Turn camera off',
    'controls.cameraOn': 'Turn camera on',
    'controls.shareStart': 'Share screen',
    'controls.shareStop': 'Stop sharing',
    'controls.leave': 'Leave',
    'controls.recordStart': 'Start recording',
    'controls.recordStop': 'Stop recording',
    'recording.on': 'Recording',
    'controls.enableAudio': 'Enable sound',
    'controls.observerNote': 'You are an observer: you see and hear the consult without sending audio or video.',

    'tile.micMuted': 'Microphone muted',
    'tile.cameraOff': 'Camera off',
    'tile.videoPaused': 'video paused: poor connection',
    'tile.pin': 'Pin',
    'tile.unpin': 'Unpin',
    'tile.pinHint': 'Keep this video at the best quality the connection allows',

    'chat.heading': 'Chat',
    'chat.placeholder': 'Type a message',
    'chat.send': 'Send',
    'chat.unavailable': 'Chat connects after joining.',
    'chat.tooLong': 'The message is too long.',
    'chat.log': 'Chat messages',

    'ended.left': 'You have left the consult',
    'ended.disconnected': 'The connection to the consult was lost',
    'ended.failed': 'You could not join the consult',
    'ended.rejoin': 'Join again',
    'ended.home': 'Start page',

    'error.heading': 'Error',
    'error.dismiss': 'Dismiss',
    'error.missingParams': 'The link must contain #room=…&token=… . Ask for a new consult link.',
    'error.connection': 'The connection to the server failed.',
    'error.connectionClosed': 'The server closed the connection (code {code}).',
    'error.publishTimeout': 'The server did not answer the media offer.',

    'notice.audioOnly': 'No camera available: joining with the microphone only.',
    'notice.noMedia': 'No camera or microphone available: you can see and hear the others but not send media.',
    'notice.rejected': 'The server refused these tracks: {tracks}',
    'notice.shareFailed': 'Screen sharing could not start.',

    // ── ER dashboard (er/), ECG panel (shared/ecg.js, consult/ecg-panel.js) ──
    'er.title': 'ER dashboard',
    'role.er': 'ER',
    'er.landing.heading': 'Ambulance telemetry',
    'er.landing.text': 'Emergency-room staff follow incoming ambulances live (ECG, vital signs, alarms) on the ER dashboard: /er/#token=TOKEN.',
    'er.landing.link': 'Open the ER dashboard',
    'er.ambulances': 'Ambulances',
    'er.noStreams': 'No active ambulances.',
    'er.selectPrompt': 'Select an ambulance to see its monitor.',
    'er.link.up': 'Link up',
    'er.link.down': 'Link down',
    'er.notListed': 'Not listed',
    'er.ago': '{age} ago',
    'er.age.s': '{s} s',
    'er.age.m': '{m} min {s} s',
    'er.age.h': '{h} h {m} min',
    'er.noData': 'no data',
    'er.alarmCount': '{n} alarms',
    'er.status.connecting': 'Connecting…',
    'er.status.connected': 'Connected as {identity} ({role})',
    'er.status.reconnecting': 'Connection lost — reconnecting…',
    'er.status.refused': 'The server refused the token.',
    'er.mute': 'Mute alarm sound',
    'er.unmute': 'Unmute alarm sound',
    'er.soundBlocked': 'Click to enable alarm sound',
    'er.alarms': 'Alarms',
    'er.alarms.none': 'No active alarms.',
    'er.alarm.ack': 'Acknowledge',
    'er.alarm.acked': 'Acknowledged by {who} at {time}',
    'er.alarm.raised': 'Raised {time}',
    'er.alarm.cleared': 'cleared {time}',
    'er.alarm.high': 'High',
    'er.alarm.medium': 'Medium',
    'er.alarm.low': 'Low',
    'er.limits': 'Alarm limits',
    'er.limits.vital': 'Vital',
    'er.limits.low': 'Low',
    'er.limits.high': 'High',
    'er.limits.apply': 'Apply',
    'er.consult.open': 'Open consult with crew',
    'er.consult.opening': 'Opening consult…',
    'er.consult.mine': 'Open my consult link',
    'er.consult.specialist': 'Specialist link',
    'er.consult.crew': 'Crew link',
    'er.consult.failed': 'Could not open the consult (HTTP {status}).',
    'er.copy': 'Copy',
    'er.copied': 'Copied',
    'er.error.missingToken': 'The link must contain #token=… . Ask for a new dashboard link.',
    'vital.hr': 'HR',
    'vital.spo2': 'SpO₂',
    'vital.nibp': 'NIBP',
    'vital.nibp_sys': 'NIBP sys',
    'vital.nibp_dia': 'NIBP dia',
    'vital.nibp_mean': 'NIBP mean',
    'vital.rr': 'RR',
    'vital.temp': 'Temp',
    'vital.etco2': 'EtCO₂',
    'vital.gps': 'Position',
    'ecg.heading': 'ECG',
    'ecg.live': 'Live ECG — {id}',
    'ecg.lead': 'Lead',
    'ecg.twelve': '12-lead',
    'ecg.noSignal': 'NO SIGNAL',
    'ecg.canvas': 'ECG sweep',
    'ecg.connecting': 'Connecting to the telemetry…',
    'ecg.connected': 'Live',
    'ecg.offline': 'Telemetry offline',
  },
  'zh-CN': {
    'app.name': 'medrelay',
    'lang.label': '语言',

    'landing.title': 'medrelay — 远程会诊',
    'landing.intro': '会诊是诊所、远程专科医生以及（必要时）救护车组共用的视频房间。每位参与者打开自己的链接。',
    'landing.howto.heading': '如何进入会诊',
    'landing.howto.link': '链接格式为 /consult/#room=房间&token=令牌。',
    'landing.howto.token': '令牌由您的机构签发，只对应一个房间和一个人；它位于链接中“#”之后，不会作为页面地址的一部分发送到服务器。',
    'landing.howto.browser': '请使用较新版本的 Chrome、Edge、Firefox 或 Safari，并在提示时允许使用摄像头和麦克风。',
    'landing.form.heading': '生成会诊链接',
    'landing.form.room': '房间',
    'landing.form.token': '令牌',
    'landing.form.build': '生成链接',
    'landing.form.open': '进入会诊',
    'landing.form.result': '会诊链接',
    'landing.form.missing': '请填写房间和令牌。',

    'consult.title': '会诊',
    'consult.participants': '参与者',
    'consult.you': '我',
    'consult.screen': '{name} — 屏幕',
    'consult.yourScreen': '我的屏幕',

    'status.connecting': '正在连接…',
    'status.joined': '已进入会诊房间“{room}”',
    'status.left': '您已离开会诊。',
    'status.disconnected': '与服务器的连接已断开。',
    'status.reconnecting': '正在重新连接…',
    'status.failed': '无法加入会诊。',

    'quality.label': '连接质量：',
    'quality.good': '良好',
    'quality.fair': '一般',
    'quality.poor': '较差',
    'quality.disconnected': '已断开',

    'role.clinic': '诊所',
    'role.specialist': '专科医生',
    'role.crew': '救护车组',
    'role.observer': '观察员',
    'role.unknown': '参与者',

    'controls.label': '通话控制',
    'controls.mute': '关闭麦克风',
    'controls.unmute': '打开麦克风',
    'controls.cameraOff': '关闭摄像头',
    'controls.cameraOn': '打开摄像头',
    'controls.shareStart': '共享屏幕',
    'controls.shareStop': '停止共享',
    'controls.leave': '离开',
    'controls.recordStart': '开始录制',
    'controls.recordStop': '停止录制',
    'recording.on': '正在录制',
    'controls.enableAudio': '开启声音',
    'controls.observerNote': '您是观察员：可以观看和收听会诊，但不发送音视频。',

    'tile.micMuted': '麦克风已关闭',
    'tile.cameraOff': '摄像头已关闭',
    'tile.videoPaused': '视频已暂停：网络较差',
    'tile.pin': '固定',
    'tile.unpin': '取消固定',
    'tile.pinHint': '在网络允许的范围内保持此视频的最佳画质',

    'chat.heading': '聊天',
    'chat.placeholder': '输入消息',
    'chat.send': '发送',
    'chat.unavailable': '加入后即可聊天。',
    'chat.tooLong': '消息过长。',
    'chat.log': '聊天记录',

    'ended.left': '您已离开会诊',
    'ended.disconnected': '与会诊的连接已断开',
    'ended.failed': '您未能加入会诊',
    'ended.rejoin': '重新加入',
    'ended.home': '首页',

    'error.heading': '错误',
    'error.dismiss': '关闭',
    'error.missingParams': '链接必须包含 #room=…&token=…，请索取新的会诊链接。',
    'error.connection': '与服务器的连接失败。',
    'error.connectionClosed': '服务器关闭了连接（代码 {code}）。',
    'error.publishTimeout': '服务器没有应答媒体请求。',

    'notice.audioOnly': '没有可用的摄像头：仅以麦克风加入。',
    'notice.noMedia': '没有可用的摄像头或麦克风：您可以看到和听到其他人，但无法发送音视频。',
    'notice.rejected': '服务器拒绝了以下轨道：{tracks}',
    'notice.shareFailed': '无法开始屏幕共享。',

    // ── ER dashboard (er/), ECG panel (shared/ecg.js, consult/ecg-panel.js) ──
    'er.title': '急诊监护台',
    'role.er': '急诊',
    'er.landing.heading': '救护车遥测',
    'er.landing.text': '急诊室人员可在急诊监护台实时查看途中救护车的心电图、生命体征和报警：/er/#token=令牌。',
    'er.landing.link': '打开急诊监护台',
    'er.ambulances': '救护车',
    'er.noStreams': '当前没有在线的救护车。',
    'er.selectPrompt': '请选择一辆救护车查看其监护数据。',
    'er.link.up': '链路正常',
    'er.link.down': '链路中断',
    'er.notListed': '不在列表中',
    'er.ago': '{age}前',
    'er.age.s': '{s} 秒',
    'er.age.m': '{m} 分 {s} 秒',
    'er.age.h': '{h} 小时 {m} 分',
    'er.noData': '无数据',
    'er.alarmCount': '{n} 个报警',
    'er.status.connecting': '正在连接…',
    'er.status.connected': '已连接：{identity}（{role}）',
    'er.status.reconnecting': '连接中断，正在重连…',
    'er.status.refused': '服务器拒绝了该令牌。',
    'er.mute': '报警静音',
    'er.unmute': '取消报警静音',
    'er.soundBlocked': '点击页面以开启报警声音',
    'er.alarms': '报警',
    'er.alarms.none': '当前没有报警。',
    'er.alarm.ack': '确认',
    'er.alarm.acked': '已由 {who} 于 {time} 确认',
    'er.alarm.raised': '发生于 {time}',
    'er.alarm.cleared': '解除于 {time}',
    'er.alarm.high': '高',
    'er.alarm.medium': '中',
    'er.alarm.low': '低',
    'er.limits': '报警限值',
    'er.limits.vital': '参数',
    'er.limits.low': '下限',
    'er.limits.high': '上限',
    'er.limits.apply': '应用',
    'er.consult.open': '与救护车组发起会诊',
    'er.consult.opening': '正在发起会诊…',
    'er.consult.mine': '打开我的会诊链接',
    'er.consult.specialist': '专科医生链接',
    'er.consult.crew': '救护车组链接',
    'er.consult.failed': '无法发起会诊（HTTP {status}）。',
    'er.copy': '复制',
    'er.copied': '已复制',
    'er.error.missingToken': '链接必须包含 #token=…，请索取新的监护台链接。',
    'vital.hr': '心率',
    'vital.spo2': '血氧 SpO₂',
    'vital.nibp': '无创血压',
    'vital.nibp_sys': '收缩压',
    'vital.nibp_dia': '舒张压',
    'vital.nibp_mean': '平均压',
    'vital.rr': '呼吸率',
    'vital.temp': '体温',
    'vital.etco2': '呼末 CO₂',
    'vital.gps': '位置',
    'ecg.heading': '心电图',
    'ecg.live': '实时心电图 — {id}',
    'ecg.lead': '导联',
    'ecg.twelve': '12 导联',
    'ecg.noSignal': '无信号',
    'ecg.canvas': '心电图扫描',
    'ecg.connecting': '正在连接遥测…',
    'ecg.connected': '实时',
    'ecg.offline': '遥测离线',
  },
};

/** The languages offered by the switch, each named in its own language. */
export const LANGUAGES = [
  { code: 'en', name: 'English' },
  { code: 'zh-CN', name: '简体中文' },
];

const STORAGE_KEY = 'medrelay.lang';

/** @type {Language} */
let current = detectLanguage();
const listeners = new Set();

/**
 * The language to start with: a choice saved by the switch, otherwise `zh-CN` for any
 * `zh*` browser language and `en` for everything else.
 * @returns {Language}
 */
export function detectLanguage() {
  const saved = readSaved();
  if (saved && saved in STRINGS) return /** @type {Language} */ (saved);
  const preferred = (globalThis.navigator?.language || 'en').toLowerCase();
  return preferred.startsWith('zh') ? 'zh-CN' : 'en';
}

/** @returns {Language} the active language. */
export function getLanguage() {
  return current;
}

/**
 * Switches the language, remembers the choice, re-renders static labels and notifies
 * the `onLanguageChange` listeners.
 * @param {Language} lang
 */
export function setLanguage(lang) {
  if (!(lang in STRINGS) || lang === current) return;
  current = lang;
  try {
    localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    // Storage may be disabled (private mode); the choice then lasts for this page only.
  }
  applyTranslations();
  for (const fn of listeners) fn(lang);
}

/**
 * Registers `fn(lang)` to run after every language change.
 * @param {(lang: Language) => void} fn
 */
export function onLanguageChange(fn) {
  listeners.add(fn);
}

/**
 * The label `key` in the active language with `{param}` placeholders filled in. A key
 * missing from the table is returned as is, so a gap is visible rather than blank.
 * @param {string} key
 * @param {Record<string, string | number>} [params]
 */
export function t(key, params = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** The label of a participant role, falling back to the raw role for unknown ones. */
export function roleLabel(role) {
  const key = `role.${role}`;
  if (key in STRINGS[current]) return t(key);
  return role || t('role.unknown');
}

const ATTRIBUTES = [
  ['data-i18n-aria-label', 'aria-label'],
  ['data-i18n-placeholder', 'placeholder'],
  ['data-i18n-title', 'title'],
];

/**
 * Renders every labelled element under `root` in the active language and sets the
 * document's `lang`.
 * @param {ParentNode} [root]
 */
export function applyTranslations(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const [data, attr] of ATTRIBUTES) {
    for (const el of root.querySelectorAll(`[${data}]`)) el.setAttribute(attr, t(el.getAttribute(data)));
  }
}

/**
 * Fills a `<select>` with the offered languages and makes it switch the language.
 * @param {HTMLSelectElement} select
 */
export function mountLanguageSwitch(select) {
  select.replaceChildren(
    ...LANGUAGES.map(({ code, name }) => {
      const option = new Option(name, code, false, code === current);
      option.lang = code;
      return option;
    }),
  );
  select.addEventListener('change', () => setLanguage(/** @type {Language} */ (select.value)));
  onLanguageChange((lang) => {
    select.value = lang;
  });
}

function readSaved() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}
