// @ts-check
// townhall meeting page: the user interface over protocol.js.

import {CAPTION_LANGUAGES, CaptionLog, knownLanguage} from './captions.js';
import {byId, make} from './dom.js';
import {ServerConnection, socketUrl} from './protocol.js';

/**
 * @typedef {import('./protocol.js').Participant} Participant
 * @typedef {import('./protocol.js').ChatMessage} ChatMessage
 * @typedef {import('./protocol.js').ConsumerInfo} ConsumerInfo
 * @typedef {import('./protocol.js').Source} Source
 * @typedef {import('./protocol.js').Joined} Joined
 * @typedef {import('./protocol.js').Caption} Caption
 * @typedef {import('./captions.js').CaptionLine} CaptionLine
 */


const NAME_KEY = 'townhall.name';
const DEVICE_KEY = 'townhall.devices';
const CAPTION_LANGUAGE_KEY = 'townhall.captionLanguage';

const ui = {
    roomName: byId('room-name', HTMLElement),
    connection: byId('connection-status', HTMLElement),
    lobby: byId('lobby', HTMLElement),
    joinForm: byId('join-form', HTMLFormElement),
    name: byId('name', HTMLInputElement),
    join: byId('join', HTMLButtonElement),
    lobbyError: byId('lobby-error', HTMLElement),
    meeting: byId('meeting', HTMLElement),
    side: byId('side', HTMLElement),
    tiles: byId('tiles', HTMLElement),
    audioSink: byId('audio-sink', HTMLElement),
    mic: byId('mic-toggle', HTMLButtonElement),
    camera: byId('camera-toggle', HTMLButtonElement),
    screen: byId('screen-toggle', HTMLButtonElement),
    hand: byId('hand-toggle', HTMLButtonElement),
    lock: byId('lock-toggle', HTMLButtonElement),
    settings: byId('settings-toggle', HTMLButtonElement),
    leave: byId('leave', HTMLButtonElement),
    devices: byId('devices', HTMLFormElement),
    micSelect: byId('mic-select', HTMLSelectElement),
    cameraSelect: byId('camera-select', HTMLSelectElement),
    participants: byId('participants', HTMLElement),
    queue: byId('queue', HTMLElement),
    chatLog: byId('chat-log', HTMLElement),
    chatForm: byId('chat-form', HTMLFormElement),
    chatInput: byId('chat-input', HTMLInputElement),
    notices: byId('notices', HTMLElement),
    ended: byId('ended', HTMLElement),
    captionsIndicator: byId('captions-indicator', HTMLElement),
    captionsNotice: byId('captions-notice', HTMLElement),
    captionsNoticeDismiss: byId('captions-notice-dismiss', HTMLButtonElement),
    captionsToggle: byId('captions-toggle', HTMLButtonElement),
    captions: byId('captions', HTMLElement),
    captionLog: byId('caption-log', HTMLElement),
    captionLanguage: byId('caption-language', HTMLSelectElement),
    audioOnly: byId('audio-only-toggle', HTMLButtonElement),
    lastNForm: byId('last-n-form', HTMLFormElement),
    lastN: byId('last-n', HTMLInputElement),
};

/** @type {ServerConnection|null} */
let connection = null;
/** @type {boolean} media was asked for once; later joins republish the kept tracks */
let mediaRequested = false;
/** @type {Set<string>} chat ids already shown */
const shownChat = new Set();

/** @returns {{token: string|null, roomId: string}} */
function fromLocation() {
    const params = new URLSearchParams(location.search);
    const parts = location.pathname.split('/').filter(Boolean);
    return {token: params.get('t'), roomId: parts[0] === 'r' && parts[1] ? decodeURIComponent(parts[1]) : ''};
}

// ---- notices and status ----------------------------------------------------

/**
 * A short message in the polite live region.
 *
 * @param {string} text
 * @param {string} [kind]
 * @param {number} [ms]
 */
function notify(text, kind = 'info', ms = 15000) {
    const p = make('p', {class: `notice notice-${kind}`, 'data-kind': kind}, text);
    ui.notices.append(p);
    setTimeout(() => p.remove(), ms);
}

/** @type {Record<string, string>} */
const STATUS_TEXT = {
    idle: '',
    connecting: 'Connecting…',
    connected: 'Connected',
    reconnecting: 'Reconnecting…',
    closed: 'Disconnected',
};

/**
 * @param {import('./protocol.js').Status} status
 * @param {string} detail
 */
function showStatus(status, detail) {
    const previous = ui.connection.dataset.status;
    ui.connection.dataset.status = status;
    ui.connection.textContent = STATUS_TEXT[status] || status;
    if (status === 'reconnecting' && previous !== 'reconnecting')
        notify('Connection lost. Reconnecting…', 'warning', 5000);
    if (status === 'connected' && previous === 'reconnecting')
        notify('Reconnected.', 'info', 5000);
    if (detail)
        ui.connection.title = detail;
}

// ---- tiles -----------------------------------------------------------------

/**
 * @param {string} participant
 * @param {string} source
 */
function tileKey(participant, source) {
    return `${participant}:${source}`;
}

/**
 * @typedef {Object} Tile
 * @property {HTMLElement} figure
 * @property {HTMLVideoElement} video
 * @property {HTMLElement} caption
 * @property {HTMLElement} paused   placeholder shown while the server does not send this video
 * @property {HTMLButtonElement|null} pin   remote cameras only
 */

/** @type {Map<string, Tile>} */
const tiles = new Map();

/**
 * Whether a participant gets a tile: only those who may publish. A listener or the captions
 * worker never has a picture; an empty tile of theirs would take a place among the speakers'
 * (on a phone, the first place on the listener's own page). They are in the participants list.
 *
 * @param {import('./protocol.js').Participant} p
 */
function hasTile(p) {
    return (p.permissions || []).includes('publish');
}

/**
 * The tile of one participant's camera or screen, made on first use.
 *
 * @param {string} participant
 * @param {'camera'|'screen'} source
 * @param {boolean} local
 */
function tile(participant, source, local) {
    const key = tileKey(participant, source);
    let t = tiles.get(key);
    if (t)
        return t;
    const figure = make('figure', {class: `tile tile-${source}`, 'data-participant': participant, 'data-source': source});
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    video.dataset.participant = participant;
    video.dataset.source = source;
    video.dataset.testid = local ? 'local-video' : 'remote-video';
    if (local)
        video.dataset.local = 'true';
    else
        video.dataset.remote = 'true';
    const caption = make('figcaption', {});
    const paused = make('p', {class: 'tile-paused', 'data-testid': 'video-paused'});
    paused.hidden = true;
    figure.append(video, paused, caption);
    /** @type {HTMLButtonElement|null} */
    let pin = null;
    if (!local && source === 'camera') {
        pin = /** @type {HTMLButtonElement} */ (make('button', {type: 'button', class: 'tile-pin', 'data-action': 'pin', 'aria-pressed': 'false'}, 'Pin'));
        pin.addEventListener('click', () => togglePin(participant));
        figure.append(pin);
    }
    ui.tiles.append(figure);
    t = {figure, video, caption, paused, pin};
    tiles.set(key, t);
    nameTile(participant, source);
    renderReceiving();
    return t;
}

/**
 * @param {string} participant
 * @param {string} source
 */
function nameTile(participant, source) {
    const t = tiles.get(tileKey(participant, source));
    if (!t || !connection)
        return;
    const p = connection.participants.get(participant);
    const name = p ? p.name : 'Someone';
    const you = connection.self && connection.self.id === participant ? ' (you)' : '';
    t.caption.textContent = source === 'screen' ? `${name}${you}: screen` : `${name}${you}`;
    t.figure.setAttribute('aria-label', t.caption.textContent);
    t.figure.dataset.speaking = p && p.speaking ? 'true' : 'false';
}

/**
 * @param {string} participant
 * @param {string} source
 */
function dropTile(participant, source) {
    const key = tileKey(participant, source);
    const t = tiles.get(key);
    if (!t)
        return;
    t.video.srcObject = null;
    t.figure.remove();
    tiles.delete(key);
}

/**
 * @param {HTMLVideoElement} video
 * @param {MediaStreamTrack|null} track
 */
function showTrack(video, track) {
    video.srcObject = track ? new MediaStream([track]) : null;
    video.hidden = !track;
    if (track)
        video.play().catch(() => {});
}

function showLocalPreview() {
    if (!connection || !connection.self || !connection.can('publish'))
        return;
    const self = connection.self.id;
    const camera = connection.local.get('camera');
    const t = tile(self, 'camera', true);
    showTrack(t.video, camera && camera.enabled && camera.track ? camera.track : null);
    const screen = connection.local.get('screen');
    if (screen && screen.track)
        showTrack(tile(self, 'screen', true).video, screen.track);
    else
        dropTile(self, 'screen');
}

/**
 * @param {MediaStreamTrack} track
 * @param {ConsumerInfo} info
 */
function onConsumer(track, info) {
    if (info.kind === 'audio') {
        const audio = document.createElement('audio');
        audio.autoplay = true;
        audio.dataset.participant = info.participant;
        audio.dataset.source = info.source;
        audio.dataset.mid = info.mid;
        audio.srcObject = new MediaStream([track]);
        ui.audioSink.append(audio);
        audio.play().catch(() => {});
        return;
    }
    const source = info.source === 'screen' ? 'screen' : 'camera';
    const t = tile(info.participant, source, false);
    t.video.dataset.mid = info.mid;
    showTrack(t.video, track);
    layoutObserver.observe(t.video);
    inViewObserver.observe(t.video);
    scheduleLayout();
}

// ---- layout hints ----------------------------------------------------------

/** How long the size of the tiles must settle before the server is told. */
const LAYOUT_DELAY_MS = 300;
/** @type {ReturnType<typeof setTimeout>|null} */
let layoutTimer = null;
const layoutObserver = new ResizeObserver(() => scheduleLayout());
/** Received videos scrolled out of the window: the server sends them no video. */
const outOfView = new WeakSet();
const inViewObserver = new IntersectionObserver((entries) => {
    let back = false;
    for (const entry of entries) {
        if (entry.isIntersecting)
            back = outOfView.delete(entry.target) || back;
        else
            outOfView.add(entry.target);
    }
    // A video scrolled back into view is wanted at once; one scrolled away can wait for the
    // scrolling to settle.
    if (back)
        sendLayout();
    else
        scheduleLayout();
}, {rootMargin: '25%'});
// A page nobody sees (a tab in the background, another app in front on a phone) takes no
// video but what plays in Picture-in-Picture: told at once, either way.
document.addEventListener('visibilitychange', () => sendLayout());
document.addEventListener('enterpictureinpicture', () => sendLayout(), true);
document.addEventListener('leavepictureinpicture', () => sendLayout(), true);

function scheduleLayout() {
    if (layoutTimer)
        clearTimeout(layoutTimer);
    layoutTimer = setTimeout(() => {
        layoutTimer = null;
        sendLayout();
    }, LAYOUT_DELAY_MS);
}

/** Tell the server the size each received video is shown at, so it sends no larger layer. */
function sendLayout() {
    if (!connection)
        return;
    const ratio = window.devicePixelRatio || 1;
    const pageShown = document.visibilityState !== 'hidden';
    /** @type {import('./protocol.js').Layout} */
    const sizes = {};
    for (const t of tiles.values()) {
        const video = t.video;
        if (video.dataset.local || !video.dataset.mid)
            continue;
        const seen = document.pictureInPictureElement === video
            || (pageShown && !outOfView.has(video));
        const shown = seen && video.isConnected && !video.hidden && video.clientWidth > 0;
        sizes[video.dataset.mid] = shown
            ? {width: Math.round(video.clientWidth * ratio), height: Math.round(video.clientHeight * ratio)}
            : {width: 0, height: 0};
    }
    connection.setLayout(sizes);
}

/** @param {boolean} low the server cut all video: this connection is too slow for it */
function showLowBandwidth(low) {
    const before = document.body.dataset.lowBandwidth === 'true';
    document.body.dataset.lowBandwidth = low ? 'true' : 'false';
    if (low && !before)
        notify('Your connection is too slow for video: you receive audio only until it improves.', 'warning');
    else if (!low && before)
        notify('Video is back.', 'info', 5000);
}

/** @param {ConsumerInfo} info */
function onConsumerClose(info) {
    if (info.kind === 'audio') {
        for (const audio of ui.audioSink.querySelectorAll('audio')) {
            if (audio instanceof HTMLAudioElement && audio.dataset.mid === info.mid) {
                audio.srcObject = null;
                audio.remove();
            }
        }
        return;
    }
    const source = info.source === 'screen' ? 'screen' : 'camera';
    const t = tiles.get(tileKey(info.participant, source));
    if (!t || t.video.dataset.mid !== info.mid)
        return;
    layoutObserver.unobserve(t.video);
    inViewObserver.unobserve(t.video);
    outOfView.delete(t.video);
    delete t.video.dataset.mid;
    if (source === 'screen')
        dropTile(info.participant, source);
    else
        showTrack(t.video, null);
}

// ---- participants, queue, chat ---------------------------------------------

/**
 * @param {Participant} p
 * @returns {HTMLElement}
 */
function participantItem(p) {
    const self = !!connection && !!connection.self && connection.self.id === p.id;
    const li = make('li', {'data-participant': p.id, class: 'participant'});
    li.dataset.speaking = p.speaking ? 'true' : 'false';
    li.dataset.hand = p.hand ? 'true' : 'false';
    const name = make('span', {class: 'participant-name'}, p.name + (self ? ' (you)' : ''));
    const state = make('span', {class: 'participant-state'});
    /** @type {string[]} */
    const words = [];
    words.push(p.audio ? 'mic on' : 'mic off');
    words.push(p.video ? 'camera on' : 'camera off');
    if (p.screen)
        words.push('sharing screen');
    if (p.hand)
        words.push('hand raised');
    if (p.muted_by_host)
        words.push('muted by host');
    if (p.speaking)
        words.push('speaking');
    if (p.connected === false)
        words.push('reconnecting');
    li.dataset.connected = p.connected === false ? 'false' : 'true';
    state.textContent = words.join(', ');
    const role = make('span', {class: 'participant-role'}, p.role);
    li.append(name, ' ', role, ' ', state);
    if (connection && connection.can('moderate') && !self) {
        const mute = make('button', {type: 'button', 'data-action': 'mute', 'aria-label': `Mute ${p.name}`}, 'Mute');
        mute.addEventListener('click', () => connection && connection.mute(p.id));
        const remove = make('button', {type: 'button', 'data-action': 'remove', class: 'danger', 'aria-label': `Remove ${p.name}`}, 'Remove');
        remove.addEventListener('click', () => {
            if (connection && confirm(`Remove ${p.name} from the meeting?`))
                connection.remove(p.id);
        });
        li.append(' ', mute, ' ', remove);
    }
    return li;
}

function renderParticipants() {
    if (!connection)
        return;
    const items = [];
    for (const p of connection.participants.values())
        items.push(participantItem(p));
    ui.participants.replaceChildren(...items);
    for (const key of tiles.keys()) {
        const [participant, source] = key.split(':');
        nameTile(participant, source);
    }
}

function renderQueue() {
    if (!connection)
        return;
    const items = connection.queue.map((id) => {
        const p = connection && connection.participants.get(id);
        return make('li', {'data-participant': id}, p ? p.name : 'Someone');
    });
    ui.queue.replaceChildren(...items);
    const raised = !!connection.self && connection.queue.includes(connection.self.id);
    setPressed(ui.hand, raised, 'Lower hand', 'Raise hand');
}

/** @param {ChatMessage} m */
function showChat(m) {
    if (m.id && shownChat.has(m.id))
        return;
    if (m.id)
        shownChat.add(m.id);
    const entry = make('p', {class: 'chat-message', 'data-participant': m.participant});
    const when = typeof m.at === 'number' ? new Date(m.at * (m.at < 1e12 ? 1000 : 1)) : new Date(m.at);
    const time = make('time', {datetime: isNaN(when.getTime()) ? '' : when.toISOString()},
        isNaN(when.getTime()) ? '' : when.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'}));
    const name = make('strong', {class: 'chat-name'}, m.name);
    const text = make('span', {class: 'chat-text'}, m.text);
    entry.append(time, ' ', name, ': ', text);
    const atBottom = ui.chatLog.scrollHeight - ui.chatLog.scrollTop - ui.chatLog.clientHeight < 40;
    ui.chatLog.append(entry);
    if (atBottom)
        ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

/**
 * @param {HTMLButtonElement} button
 * @param {boolean} pressed
 * @param {string} onText
 * @param {string} offText
 */
function setPressed(button, pressed, onText, offText) {
    button.setAttribute('aria-pressed', pressed ? 'true' : 'false');
    button.textContent = pressed ? onText : offText;
}

function renderControls() {
    if (!connection)
        return;
    const canPublish = connection.can('publish');
    for (const element of document.querySelectorAll('[data-publish]'))
        if (element instanceof HTMLElement)
            element.hidden = !canPublish;
    if (!canPublish)
        ui.devices.hidden = true;
    const moderate = connection.can('moderate');
    ui.lock.hidden = !moderate;
    const locked = !!connection.room && connection.room.locked;
    setPressed(ui.lock, locked, 'Unlock room', 'Lock room');
    setPressed(ui.mic, connection.isEnabled('microphone'), 'Mute microphone', 'Unmute microphone');
    ui.mic.setAttribute('aria-label', 'Microphone');
    setPressed(ui.camera, connection.isEnabled('camera'), 'Stop camera', 'Start camera');
    ui.camera.setAttribute('aria-label', 'Camera');
    setPressed(ui.screen, connection.isEnabled('screen'), 'Stop sharing', 'Share screen');
    ui.screen.setAttribute('aria-label', 'Share screen');
}

// ---- local media -----------------------------------------------------------

/** @returns {{microphone?: string, camera?: string}} */
function savedDevices() {
    try {
        return JSON.parse(localStorage.getItem(DEVICE_KEY) || '{}');
    } catch (e) {
        return {};
    }
}

/**
 * @param {'microphone'|'camera'} source
 * @param {string} deviceId
 */
function saveDevice(source, deviceId) {
    const devices = savedDevices();
    devices[source] = deviceId;
    localStorage.setItem(DEVICE_KEY, JSON.stringify(devices));
}

/**
 * @param {'microphone'|'camera'} source
 * @returns {MediaTrackConstraints}
 */
function constraints(source) {
    const deviceId = savedDevices()[source];
    /** @type {MediaTrackConstraints} */
    // Published in three simulcast layers: 320×180, 640×360 and 1280×720.
    const c = source === 'camera' ? {width: {ideal: 1280}, height: {ideal: 720}, frameRate: {ideal: 24}} : {};
    if (deviceId)
        c.deviceId = {ideal: deviceId};
    return c;
}

/**
 * @param {'microphone'|'camera'} source
 * @returns {Promise<MediaStreamTrack|null>}
 */
async function capture(source) {
    try {
        const stream = await navigator.mediaDevices.getUserMedia(
            source === 'microphone' ? {audio: constraints(source)} : {video: constraints(source)});
        return stream.getTracks()[0] || null;
    } catch (e) {
        notify(`Could not use the ${source}: ${e instanceof Error ? e.message : e}`, 'warning');
        return null;
    }
}

/** First join: ask for microphone and camera, publish both. */
async function startMedia() {
    if (!connection || mediaRequested || !connection.can('publish'))
        return;
    mediaRequested = true;
    /** @type {MediaStreamTrack[]} */
    let tracks = [];
    try {
        const stream = await navigator.mediaDevices.getUserMedia({
            audio: constraints('microphone'), video: constraints('camera'),
        });
        tracks = stream.getTracks();
    } catch (e) {
        const mic = await capture('microphone');
        const cam = await capture('camera');
        tracks = /** @type {MediaStreamTrack[]} */ ([mic, cam].filter(Boolean));
    }
    for (const track of tracks)
        await connection.setTrack(track.kind === 'audio' ? 'microphone' : 'camera', track);
    showLocalPreview();
    renderControls();
    await listDevices();
}

async function listDevices() {
    let devices;
    try {
        devices = await navigator.mediaDevices.enumerateDevices();
    } catch (e) {
        return;
    }
    /**
     * @param {HTMLSelectElement} select
     * @param {MediaDeviceKind} kind
     * @param {Source} source
     */
    const fill = (select, kind, source) => {
        const current = connection && connection.local.get(source);
        const currentId = current && current.track ? current.track.getSettings().deviceId : '';
        const options = devices.filter((d) => d.kind === kind).map((d, i) => {
            const option = document.createElement('option');
            option.value = d.deviceId;
            option.textContent = d.label || `${kind === 'audioinput' ? 'Microphone' : 'Camera'} ${i + 1}`;
            option.selected = d.deviceId === currentId;
            return option;
        });
        select.replaceChildren(...options);
    };
    fill(ui.micSelect, 'audioinput', 'microphone');
    fill(ui.cameraSelect, 'videoinput', 'camera');
}

/**
 * @param {'microphone'|'camera'} source
 * @param {string} deviceId
 */
async function switchDevice(source, deviceId) {
    if (!connection)
        return;
    saveDevice(source, deviceId);
    const local = connection.local.get(source);
    if (!local || !local.enabled)
        return;        // used next time the source is switched on
    const kind = source === 'microphone' ? 'audio' : 'video';
    /** @type {MediaStreamConstraints} */
    const wanted = {[kind]: {...constraints(source), deviceId: {exact: deviceId}}};
    try {
        const stream = await navigator.mediaDevices.getUserMedia(wanted);
        const track = stream.getTracks()[0];
        const old = local.track;
        await connection.setTrack(source, track);
        if (old)
            old.stop();
        showLocalPreview();
    } catch (e) {
        notify(`Could not switch the ${source}: ${e instanceof Error ? e.message : e}`, 'warning');
    }
}

async function toggleMic() {
    if (!connection)
        return;
    const local = connection.local.get('microphone');
    if (!local || !local.track || local.track.readyState === 'ended') {
        const track = await capture('microphone');
        if (track)
            await connection.setTrack('microphone', track);
        await connection.setEnabled('microphone', true);
    } else {
        await connection.setEnabled('microphone', !local.enabled);
    }
    renderControls();
}

async function toggleCamera() {
    if (!connection)
        return;
    const local = connection.local.get('camera');
    if (local && local.enabled && local.track) {
        // Off: release the device so that its light goes out.
        await connection.setEnabled('camera', false);
        local.track.stop();
    } else {
        const track = await capture('camera');
        if (!track)
            return;
        await connection.setTrack('camera', track);
        await connection.setEnabled('camera', true);
    }
    showLocalPreview();
    renderControls();
}

async function toggleScreen() {
    if (!connection)
        return;
    const local = connection.local.get('screen');
    if (local && local.track) {
        const track = local.track;
        await connection.setTrack('screen', null);
        track.stop();
    } else {
        let stream;
        try {
            stream = await navigator.mediaDevices.getDisplayMedia({video: true, audio: false});
        } catch (e) {
            notify('Screen sharing was not started.', 'info', 5000);
            return;
        }
        const track = stream.getVideoTracks()[0];
        track.addEventListener('ended', () => {
            if (connection && connection.local.get('screen')?.track === track) {
                connection.setTrack('screen', null).then(() => {
                    showLocalPreview();
                    renderControls();
                });
            }
        });
        const published = connection.setTrack('screen', track);
        showLocalPreview();
        renderControls();
        await published;
    }
    showLocalPreview();
    renderControls();
}

// ---- captions --------------------------------------------------------------

/** @type {boolean} whether the room's captions are on, as this page last knew */
let captionsOn = false;
const captionLog = new CaptionLog(6);
/** @type {Map<string, HTMLElement>} caption line key → its element */
const captionElements = new Map();

/**
 * The room's captions are on or off.  When they come on (or are on when one
 * joins), the participant is told that their speech is transcribed.
 *
 * @param {boolean} enabled
 * @param {boolean} announce  say it in a notice too
 */
function showCaptionsState(enabled, announce) {
    const was = captionsOn;
    captionsOn = enabled;
    ui.captionsIndicator.hidden = !enabled;
    ui.captions.hidden = !enabled;
    setPressed(ui.captionsToggle, enabled, 'Turn captions off', 'Turn captions on');
    ui.captionsToggle.hidden = !connection || !connection.can('moderate');
    if (enabled && !was)
        ui.captionsNotice.hidden = false;
    if (!enabled)
        ui.captionsNotice.hidden = true;
    if (announce && enabled !== was)
        notify(enabled ? 'Captions are on.' : 'Captions are off.', 'info', 5000);
}

/** @param {Caption} caption */
function showCaption(caption) {
    const change = captionLog.add(caption);
    for (const old of change.removed) {
        const element = captionElements.get(old.key);
        if (element)
            element.remove();
        captionElements.delete(old.key);
    }
    const line = change.line;
    if (!line)
        return;
    let element = captionElements.get(line.key);
    if (!element) {
        element = make('div', {class: 'caption-line', 'data-participant': line.participant,
            'data-utterance': line.utterance});
        element.append(make('span', {class: 'caption-name'}, line.name),
            make('p', {class: 'caption-text', dir: 'auto'}));
        captionElements.set(line.key, element);
        ui.captionLog.append(element);
    }
    renderCaptionLine(element, line);
    ui.captionLog.scrollTop = ui.captionLog.scrollHeight;
}

/**
 * @param {HTMLElement} element
 * @param {CaptionLine} line
 */
function renderCaptionLine(element, line) {
    element.dataset.final = line.final ? 'true' : 'false';
    // Screen readers wait for the final instead of reading every partial.
    element.setAttribute('aria-busy', line.final ? 'false' : 'true');
    const name = element.querySelector('.caption-name');
    if (name)
        name.textContent = line.name;
    const text = element.querySelector('.caption-text');
    if (text instanceof HTMLElement) {
        text.textContent = line.text;
        text.lang = line.lang;
        text.title = line.translated ? `Translated; said: ${line.original}` : '';
    }
}

function clearCaptions() {
    captionLog.clear();
    captionElements.clear();
    ui.captionLog.replaceChildren();
}

function setupCaptions() {
    const saved = knownLanguage(localStorage.getItem(CAPTION_LANGUAGE_KEY));
    ui.captionLanguage.replaceChildren(...CAPTION_LANGUAGES.map(([code, label]) => {
        const option = document.createElement('option');
        option.value = code;
        option.textContent = label;
        option.selected = code === saved;
        return option;
    }));
    ui.captionLanguage.addEventListener('change', () => {
        const language = ui.captionLanguage.value;
        localStorage.setItem(CAPTION_LANGUAGE_KEY, language);
        if (connection)
            connection.setCaptionLanguage(language || null);
    });
    ui.captionsToggle.addEventListener('click', () => {
        if (connection)
            connection.setCaptions(!captionsOn);
    });
    ui.captionsNoticeDismiss.addEventListener('click', () => {
        ui.captionsNotice.hidden = true;
    });
}

/** @param {ServerConnection} conn */
function connectCaptions(conn) {
    conn.captionLanguage = ui.captionLanguage.value || null;
    conn.oncaptions = (enabled) => showCaptionsState(enabled, true);
    conn.oncaption = showCaption;
}

// ---- receiving: audio-only, pins, last-N --------------------------------------

const AUDIO_ONLY_KEY = 'townhall.audioOnly';

/** Audio-only state, the dominant speaker, pins and paused videos, on the controls and tiles. */
function renderReceiving() {
    if (!connection)
        return;
    const audioOnly = !connection.receiveVideo;
    setPressed(ui.audioOnly, audioOnly, 'Audio only: on', 'Audio only');
    ui.audioOnly.setAttribute('aria-label', 'Audio only');
    const moderate = connection.can('moderate');
    ui.lastNForm.hidden = !moderate;
    const lastN = connection.room && connection.room.last_n;
    if (lastN && document.activeElement !== ui.lastN)
        ui.lastN.value = String(lastN);
    for (const [key, t] of tiles) {
        const participant = key.split(':')[0];
        t.figure.dataset.activeSpeaker = connection.activeSpeaker === participant ? 'true' : 'false';
        if (t.video.dataset.local === 'true')
            continue;
        const forwarded = !audioOnly && connection.isForwarded(participant);
        t.figure.dataset.forwarded = forwarded ? 'true' : 'false';
        t.paused.hidden = forwarded;
        t.paused.textContent = audioOnly ? 'Audio only: video is not received' :
            'Video paused: not among the recent speakers';
        if (t.pin)
            setPressed(t.pin, connection.pins.includes(participant), 'Unpin', 'Pin');
    }
}

/** The CSS order of the last tile brought forward; each one brought goes before it. */
let broughtForward = 0;

/**
 * A new active speaker whose camera is scrolled out of the window (a large meeting on a small
 * screen) moves to the front of the tiles: the server sends video of the recent speakers, and
 * none of a video out of view, so they are the ones to see. Tiles in view stay where they are.
 *
 * @param {string|null} participant
 */
function bringForward(participant) {
    const t = participant && tiles.get(tileKey(participant, 'camera'));
    if (!t || t.video.dataset.local || !outOfView.has(t.video))
        return;
    broughtForward -= 1;
    t.figure.style.order = String(broughtForward);
}

/** @param {string} participant */
function togglePin(participant) {
    if (!connection)
        return;
    const pins = connection.pins.includes(participant) ?
        connection.pins.filter((p) => p !== participant) : [...connection.pins, participant];
    connection.pin(pins);
    renderReceiving();
}

function setupReceiving() {
    ui.audioOnly.addEventListener('click', () => {
        if (!connection)
            return;
        const video = !connection.receiveVideo;
        connection.setReceiveVideo(video);
        localStorage.setItem(AUDIO_ONLY_KEY, video ? 'false' : 'true');
        notify(video ? 'Receiving video again.' : 'Audio only: no video is received.', 'info', 5000);
        renderReceiving();
    });
    ui.lastNForm.addEventListener('submit', (e) => {
        e.preventDefault();
        const n = Number(ui.lastN.value);
        if (connection && Number.isInteger(n) && n >= 1 && n <= 40)
            connection.setLastN(n);
    });
    ui.lastN.addEventListener('change', () => ui.lastNForm.requestSubmit());
}

/** @param {ServerConnection} conn */
function connectReceiving(conn) {
    conn.receiveVideo = localStorage.getItem(AUDIO_ONLY_KEY) !== 'true';
    conn.onforwarding = () => {
        renderReceiving();
        showLowBandwidth(conn.lowBandwidth);
    };
    conn.onactivespeaker = (participant) => {
        bringForward(participant);
        renderReceiving();
    };
}

// ---- the connection --------------------------------------------------------

/** @param {Joined} joined */
function onJoined(joined) {
    ui.roomName.textContent = joined.room.name;
    document.title = `${joined.room.name} — townhall`;
    // Start over: the connection has announced the end of every old consumer.
    for (const key of [...tiles.keys()]) {
        const [participant, source] = key.split(':');
        dropTile(participant, source);
    }
    ui.audioSink.replaceChildren();
    ui.chatLog.replaceChildren();
    shownChat.clear();
    clearCaptions();
    showCaptionsState(!!joined.room.captions, false);
    for (const m of joined.chat || [])
        showChat(m);
    if (connection)
        for (const p of connection.participants.values())
            if (hasTile(p))
                tile(p.id, 'camera', !!connection.self && p.id === connection.self.id);
    showLocalPreview();
    renderParticipants();
    renderQueue();
    renderControls();
    startMedia().catch((e) => notify(`Media failed: ${e}`, 'warning'));
}

/**
 * @param {string} token
 * @param {string} name
 */
function start(token, name) {
    connection = new ServerConnection({url: socketUrl(location), token, name});
    // Test hook and console handle: the connection object itself.
    /** @type {any} */ (window).townhall = connection;
    connection.onstatus = showStatus;
    connection.onjoined = onJoined;
    connection.onparticipant = (kind, p) => {
        if (kind === 'joined') {
            if (hasTile(p))
                tile(p.id, 'camera', false);
            notify(`${p.name} joined.`, 'info', 5000);
        } else if (kind === 'left') {
            dropTile(p.id, 'camera');
            dropTile(p.id, 'screen');
            notify(`${p.name} left.`, 'info', 5000);
        }
        renderParticipants();
        renderQueue();
        renderControls();
    };
    connection.onspeaking = () => renderParticipants();
    connection.onqueue = () => renderQueue();
    connection.onchat = showChat;
    connection.onroom = (room) => {
        notify(room.locked ? 'The room is now locked.' : 'The room is now unlocked.', 'info', 5000);
        renderControls();
        renderReceiving();
    };
    connection.onconsumer = onConsumer;
    connection.onconsumerclose = onConsumerClose;
    connectCaptions(connection);
    connectReceiving(connection);
    connection.onmuted = () => {
        notify('You were muted by the host', 'muted', 30000);
        renderControls();
    };
    connection.onerror = (error) => {
        notify(error.message || error.code, 'error', 10000);
    };
    connection.onclose = (code, reason, message) => {
        ui.meeting.hidden = true;
        ui.side.hidden = true;
        ui.ended.hidden = false;
        ui.ended.dataset.code = String(code);
        ui.ended.textContent = message;
        if (code === 1000) {
            const again = make('a', {href: location.href, class: 'button'}, 'Join again');
            ui.ended.append(' ', again);
        }
    };
    ui.lobby.hidden = true;
    ui.meeting.hidden = false;
    ui.side.hidden = false;
    connection.connect();
}

function main() {
    const {token} = fromLocation();
    ui.name.value = localStorage.getItem(NAME_KEY) || '';
    if (!token) {
        ui.lobbyError.hidden = false;
        ui.lobbyError.textContent = 'This link has no invite token. Ask the host for an invite link.';
        ui.join.disabled = true;
        return;
    }
    ui.joinForm.addEventListener('submit', (e) => {
        e.preventDefault();
        const name = ui.name.value.trim().slice(0, 64);
        if (!name) {
            ui.name.focus();
            return;
        }
        localStorage.setItem(NAME_KEY, name);
        start(token, name);
    });
    setupCaptions();
    setupReceiving();
    ui.mic.addEventListener('click', () => { toggleMic(); });
    ui.camera.addEventListener('click', () => { toggleCamera(); });
    ui.screen.addEventListener('click', () => { toggleScreen(); });
    ui.hand.addEventListener('click', () => {
        if (!connection || !connection.self)
            return;
        connection.raiseHand(!connection.queue.includes(connection.self.id));
    });
    ui.lock.addEventListener('click', () => {
        if (connection)
            connection.lock(!(connection.room && connection.room.locked));
    });
    ui.settings.addEventListener('click', () => {
        ui.devices.hidden = !ui.devices.hidden;
        ui.settings.setAttribute('aria-expanded', ui.devices.hidden ? 'false' : 'true');
        if (!ui.devices.hidden)
            listDevices();
    });
    ui.micSelect.addEventListener('change', () => { switchDevice('microphone', ui.micSelect.value); });
    ui.cameraSelect.addEventListener('change', () => { switchDevice('camera', ui.cameraSelect.value); });
    ui.leave.addEventListener('click', () => {
        if (connection)
            connection.leave();
    });
    ui.chatForm.addEventListener('submit', (e) => {
        e.preventDefault();
        const text = ui.chatInput.value.trim();
        if (!text || !connection)
            return;
        if (connection.sendChat(text))
            ui.chatInput.value = '';
        else
            notify('Not connected: the message was not sent.', 'warning', 5000);
    });
    window.addEventListener('pagehide', () => {
        if (connection && connection.status === 'connected')
            connection.leave();
    });
    if (navigator.mediaDevices && navigator.mediaDevices.addEventListener)
        navigator.mediaDevices.addEventListener('devicechange', () => { listDevices(); });
}

main();
