// @ts-check
// townhall signalling client: one WebSocket, two RTCPeerConnections, no DOM.
//
// The contract is docs/protocol.md.  This module owns the socket, the
// publishing transport (the page offers) and the receiving transport (the
// server offers), the join/resume/reconnect logic, and turns server messages
// into callbacks that a user interface (app.js) or a test assigns.

/**
 * @typedef {'microphone'|'camera'|'screen'} Source
 *
 * @typedef {Object} Participant
 * @property {string} id
 * @property {string} name
 * @property {string} role
 * @property {string[]} permissions
 * @property {boolean} audio
 * @property {boolean} video
 * @property {boolean} screen
 * @property {boolean} hand
 * @property {boolean} muted_by_host
 * @property {boolean} speaking
 * @property {boolean} [connected]  false while the server keeps a dropped participant's place
 *
 * @typedef {Object} Room
 * @property {string} id
 * @property {string} name
 * @property {boolean} locked
 * @property {boolean} [captions]  speech in this room is captioned
 * @property {number} [last_n]  how many recent speakers' cameras each participant receives
 *
 * @typedef {Object} Caption
 * @property {string} participant     the speaker
 * @property {string} name
 * @property {string} utterance       partials and the final of one utterance share it
 * @property {boolean} final
 * @property {string} language        ISO 639-1 code of the speech
 * @property {string} text            in the chosen language where a translation came
 * @property {string} original
 * @property {string|null} translated the language of `text` when it is a translation
 *
 * @typedef {Object} ChatMessage
 * @property {string} id
 * @property {string} participant
 * @property {string} name
 * @property {string} text
 * @property {string|number} at
 *
 * @typedef {Object} ConsumerInfo
 * @property {string} mid
 * @property {string} participant
 * @property {Source} source
 * @property {'audio'|'video'} kind
 * @property {string} producer
 *
 * @typedef {Object} Joined
 * @property {Participant} participant
 * @property {string} resume
 * @property {boolean} resumed
 * @property {Room} room
 * @property {{id: string, started_at: string|number}} meeting
 * @property {Participant[]} participants
 * @property {ChatMessage[]} chat
 * @property {string[]} queue
 * @property {string|null} [active_speaker]
 * @property {RTCIceServer[]} ice_servers
 *
 * @typedef {'idle'|'connecting'|'connected'|'reconnecting'|'closed'} Status
 *
 * @typedef {Object} ProtocolError
 * @property {string} code
 * @property {string} message
 * @property {string} [request]
 * @property {number} [id]  the `id` of the failed request, when it carried one
 *
 * @typedef {Record<string, {width: number, height: number}>} Layout  video size by consumer mid
 *
 * @typedef {Object} LocalSource
 * @property {MediaStreamTrack|null} track
 * @property {boolean} enabled
 * @property {RTCRtpTransceiver|null} transceiver
 * @property {boolean} announced   the server has seen this source in a `publish`
 */

/** Close codes after which the page must not reconnect. */
export const FINAL_CLOSE_CODES = Object.freeze([1000, 4401, 4403, 4404]);

/** @type {Readonly<Record<number, string>>} */
const CLOSE_MESSAGES = Object.freeze({
    4401: 'This invite link is not valid or has expired. Ask the host for a new one.',
    4403: 'You cannot take part in this meeting.',
    4404: 'This room no longer exists.',
});

/**
 * A user-facing explanation of a close code and reason.
 *
 * @param {number} code
 * @param {string} reason
 * @returns {string}
 */
export function closeMessage(code, reason) {
    if (code === 4403 && reason === 'removed by host')
        return 'You were removed from the meeting by the host.';
    if (code === 4403 && reason === 'room locked')
        return 'The room is locked: nobody new can join right now.';
    if (code === 1000)
        return 'You left the meeting.';
    return CLOSE_MESSAGES[code] || `Disconnected (${code}${reason ? ': ' + reason : ''}).`;
}

/**
 * Reconnection delay in milliseconds for the given attempt (0-based):
 * 0.5 s doubling to a cap of 5 s, with ±20 % jitter so that a room full of
 * pages dropped by the same network failure does not return in lockstep.
 *
 * @param {number} attempt
 * @param {() => number} [random]
 * @returns {number}
 */
export function backoffDelay(attempt, random = Math.random) {
    const base = Math.min(5000, 500 * Math.pow(2, attempt));
    return Math.round(base * (0.8 + 0.4 * random()));
}

/**
 * The WebSocket URL of a page location: same host, `wss:` under https.
 *
 * @param {{protocol: string, host: string}} location
 * @returns {string}
 */
export function socketUrl(location) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
}

/** @type {Source[]} */
const SOURCES = ['microphone', 'camera', 'screen'];

/**
 * The camera is published in three simulcast encodings; the server forwards
 * each receiver the one that fits its bandwidth and the size it shows.
 *
 * @type {RTCRtpEncodingParameters[]}
 */
export const CAMERA_ENCODINGS = Object.freeze([
    {rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000},
    {rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000},
    {rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000},
]).map((e) => Object.freeze(e));

/** How often to send `ping`, and how long a silent socket is trusted. */
const PING_INTERVAL_MS = 10000;
const SILENCE_LIMIT_MS = 25000;

/**
 * How long a peer connection may stay `disconnected` (its path stopped working: a network
 * change, a NAT binding that expired) before the page asks for a new one.
 */
const DISCONNECTED_LIMIT_MS = 5000;

/**
 * One participant's connection to a townhall server.
 *
 * Assign the `on…` callbacks, call `connect()`, then publish tracks with
 * `setTrack()`.  Local tracks survive reconnection: after a dropped socket
 * the connection joins again with its `resume` secret and publishes them
 * again on fresh transports.
 */
export class ServerConnection {
    /**
     * @param {Object} options
     * @param {string} options.url    WebSocket URL (see socketUrl)
     * @param {string} options.token  invite token
     * @param {string} options.name   display name
     */
    constructor({url, token, name}) {
        /** @type {string} */
        this.url = url;
        /** @type {string} */
        this.token = token;
        /** @type {string} */
        this.name = name;

        /** @type {WebSocket|null} */
        this.socket = null;
        /** @type {Status} */
        this.status = 'idle';
        /** @type {string|null} the secret from the last `joined` */
        this.resumeSecret = null;
        /** @type {Participant|null} */
        this.self = null;
        /** @type {Room|null} */
        this.room = null;
        /** @type {Map<string, Participant>} everyone, this participant included */
        this.participants = new Map();
        /** @type {string[]} */
        this.queue = [];
        /** @type {RTCIceServer[]} */
        this.iceServers = [];

        /** @type {RTCPeerConnection|null} the transport this page publishes on */
        this.publishTransport = null;
        /** @type {RTCPeerConnection|null} the transport this page receives on */
        this.subscribeTransport = null;
        /** @type {number|null} the server's number for `subscribeTransport` */
        this._subscribeConnection = null;
        /** @type {boolean} the next publish offer starts a new connection (`restart`) */
        this._publishRestart = false;
        /** @type {Map<string, ConsumerInfo>} by mid, as last announced to the UI */
        this.consumers = new Map();
        /** @type {Map<Source, LocalSource>} */
        this.local = new Map();
        /** @type {boolean} the server cut all video: this connection is too slow for it */
        this.lowBandwidth = false;
        /** @type {string} the last layout sent, as JSON */
        this._layoutSent = '';

        /** @type {number} */
        this._attempt = 0;
        /** @type {ReturnType<typeof setTimeout>|null} */
        this._reconnectTimer = null;
        /** @type {ReturnType<typeof setInterval>|null} */
        this._pingTimer = null;
        /** @type {number} */
        this._lastHeard = 0;
        /** @type {boolean} */
        this._leaving = false;
        /** @type {Promise<void>} negotiations of the publishing transport run one at a time */
        this._publishChain = Promise.resolve();
        /** @type {boolean} */
        this._publishWanted = false;
        /** @type {{resolve: (sdp: string) => void, reject: (e: Error) => void, id: number}|null} */
        this._publishPending = null;
        /** @type {number} the last request `id` used (the server echoes it in the reply) */
        this._requestId = 0;
        /** @type {Promise<void>} subscribe offers are answered in order */
        this._subscribeChain = Promise.resolve();
        /** @type {number} increments for every socket, so stale work can notice */
        this._generation = 0;
        /** @type {string|null} the caption language asked for (null: the original) */
        this.captionLanguage = null;
        /** @type {boolean} false: audio-only mode (sent again after every join) */
        this.receiveVideo = true;
        /** @type {string[]} participants whose camera is always received */
        this.pins = [];
        /** @type {Set<string>|null} whose video the server sends now (null: not told yet) */
        this.forwarded = null;
        /** @type {string|null} the dominant speaker */
        this.activeSpeaker = null;

        // Callbacks.  Every one is optional.
        /** @type {((joined: Joined) => void)|null} */
        this.onjoined = null;
        /** @type {((kind: 'joined'|'updated'|'left', p: Participant) => void)|null} */
        this.onparticipant = null;
        /** @type {((message: ChatMessage) => void)|null} */
        this.onchat = null;
        /** @type {((queue: string[]) => void)|null} */
        this.onqueue = null;
        /** @type {((speaking: string[]) => void)|null} */
        this.onspeaking = null;
        /** @type {((room: Room) => void)|null} */
        this.onroom = null;
        /** @type {((track: MediaStreamTrack, info: ConsumerInfo) => void)|null} */
        this.onconsumer = null;
        /** @type {((info: ConsumerInfo) => void)|null} */
        this.onconsumerclose = null;
        /** @type {((by: string) => void)|null} */
        this.onmuted = null;
        /** @type {((status: Status, detail: string) => void)|null} */
        this.onstatus = null;
        /** @type {((error: ProtocolError) => void)|null} */
        this.onerror = null;
        /** @type {((code: number, reason: string, message: string) => void)|null} */
        this.onclose = null;
        /** @type {((enabled: boolean) => void)|null} the room's captions were turned on or off */
        this.oncaptions = null;
        /** @type {((caption: Caption) => void)|null} */
        this.oncaption = null;
        /** @type {((video: Set<string>) => void)|null} whose video is sent to this page */
        this.onforwarding = null;
        /** @type {((participant: string|null) => void)|null} the dominant speaker changed */
        this.onactivespeaker = null;
    }

    // ---- socket and session -------------------------------------------------

    /** Open the socket and join.  Later drops reconnect by themselves. */
    connect() {
        if (this.socket || this.status === 'closed')
            return;
        this._leaving = false;
        this._open();
    }

    /** Leave the meeting for good: tell the server, close everything. */
    leave() {
        this._leaving = true;
        this._cancelReconnect();
        if (this.socket && this.socket.readyState === WebSocket.OPEN) {
            this.send({type: 'leave'});
            // The server closes with 1000; close ourselves if it does not.
            const socket = this.socket;
            setTimeout(() => {
                if (socket.readyState !== WebSocket.CLOSED)
                    socket.close(1000, 'left');
            }, 2000);
        } else {
            this._finish(1000, 'left');
        }
    }

    /**
     * Drop the socket as a failing network would and reconnect.  The
     * silence watchdog uses this; so can a test.
     *
     * @param {string} [why]
     */
    drop(why = 'connection lost') {
        if (!this.socket)
            return;
        const socket = this.socket;
        this._detach(socket);
        try {
            socket.close(4000, why);
        } catch (e) {
            // already closing
        }
        this._lost(1006, why);
    }

    _open() {
        const generation = ++this._generation;
        this._setStatus(this._attempt === 0 && !this.resumeSecret ?
            'connecting' : 'reconnecting', '');
        let socket;
        try {
            socket = new WebSocket(this.url);
        } catch (e) {
            this._lost(1006, String(e));
            return;
        }
        this.socket = socket;
        socket.onopen = () => {
            if (generation !== this._generation)
                return;
            this._lastHeard = Date.now();
            /** @type {Record<string, unknown>} */
            const join = {type: 'join', token: this.token, name: this.name};
            if (this.resumeSecret)
                join.resume = this.resumeSecret;
            this.send(join);
            this._startPing();
        };
        socket.onmessage = (e) => {
            if (generation !== this._generation)
                return;
            this._lastHeard = Date.now();
            let message;
            try {
                message = JSON.parse(String(e.data));
            } catch (err) {
                console.warn('townhall: ignoring a message that is not JSON');
                return;
            }
            this._dispatch(message);
        };
        socket.onclose = (e) => {
            if (generation !== this._generation)
                return;
            this._detach(socket);
            if (this._leaving || FINAL_CLOSE_CODES.includes(e.code))
                this._finish(e.code, e.reason);
            else
                this._lost(e.code, e.reason);
        };
        socket.onerror = () => {
            // a close event always follows
        };
    }

    /** @param {WebSocket} socket */
    _detach(socket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        if (this.socket === socket)
            this.socket = null;
        this._generation++;
        this._stopPing();
    }

    /**
     * The socket went away without a final code: keep local tracks, close the
     * transports, try again after a backoff delay.
     *
     * @param {number} code
     * @param {string} reason
     */
    _lost(code, reason) {
        this._closeTransports();
        if (this.status === 'closed')
            return;
        const delay = backoffDelay(this._attempt);
        this._attempt++;
        this._setStatus('reconnecting', `closed ${code}${reason ? ' ' + reason : ''}; retrying in ${delay} ms`);
        this._cancelReconnect();
        this._reconnectTimer = setTimeout(() => {
            this._reconnectTimer = null;
            this._open();
        }, delay);
    }

    /**
     * @param {number} code
     * @param {string} reason
     */
    _finish(code, reason) {
        this._cancelReconnect();
        this._closeTransports();
        if (this.socket) {
            const socket = this.socket;
            this._detach(socket);
            socket.close(1000);
        }
        for (const source of this.local.values())
            if (source.track)
                source.track.stop();
        this.local.clear();
        if (this.status === 'closed')
            return;
        this._setStatus('closed', closeMessage(code, reason));
        if (this.onclose)
            this.onclose(code, reason, closeMessage(code, reason));
    }

    _cancelReconnect() {
        if (this._reconnectTimer !== null) {
            clearTimeout(this._reconnectTimer);
            this._reconnectTimer = null;
        }
    }

    _startPing() {
        this._stopPing();
        this._pingTimer = setInterval(() => {
            if (Date.now() - this._lastHeard > SILENCE_LIMIT_MS) {
                this.drop('no answer from the server');
                return;
            }
            this.send({type: 'ping'});
        }, PING_INTERVAL_MS);
    }

    _stopPing() {
        if (this._pingTimer !== null) {
            clearInterval(this._pingTimer);
            this._pingTimer = null;
        }
    }

    /**
     * @param {Status} status
     * @param {string} detail
     */
    _setStatus(status, detail) {
        this.status = status;
        if (this.onstatus)
            this.onstatus(status, detail);
    }

    /**
     * Send one message.  Returns false when the socket is not open.
     *
     * @param {Record<string, unknown>} message
     * @returns {boolean}
     */
    send(message) {
        if (!this.socket || this.socket.readyState !== WebSocket.OPEN)
            return false;
        this.socket.send(JSON.stringify(message));
        return true;
    }

    // ---- incoming messages ---------------------------------------------------

    /** @param {any} m */
    _dispatch(m) {
        switch (m.type) {
        case 'joined': this._gotJoined(m); break;
        case 'publish-answer': this._gotPublishAnswer(m); break;
        case 'publish-restart': this._restartPublishing(); break;
        case 'subscribe-offer': this._gotSubscribeOffer(m); break;
        case 'participant-joined': this._upsert('joined', m.participant); break;
        case 'participant-updated': this._upsert('updated', m.participant); break;
        case 'participant-left': this._gotLeft(m.participant); break;
        case 'speaking': this._gotSpeaking(m.participants || []); break;
        case 'chat':
            if (this.onchat)
                this.onchat(m);
            break;
        case 'queue':
            this.queue = m.participants || [];
            if (this.onqueue)
                this.onqueue(this.queue);
            break;
        case 'room':
            this.room = {id: m.id, name: m.name, locked: !!m.locked, captions: !!m.captions,
                last_n: m.last_n};
            if (this.onroom)
                this.onroom(this.room);
            break;
        case 'muted': this._gotMuted(m.by); break;
        case 'captions': this._gotCaptions(!!m.enabled); break;
        case 'caption':
            if (this.oncaption)
                this.oncaption(m);
            break;
        case 'caption-languages': break;
        case 'forwarding': this._gotForwarding(m.video || [], !!m.low_bandwidth); break;
        case 'send-layers': this._gotSendLayers(m.source, m.layers).catch(() => {}); break;
        case 'active-speaker': this._gotActiveSpeaker(m.participant || null); break;
        case 'error': this._gotError(m); break;
        case 'pong': break;
        default:
            console.warn('townhall: unknown message type', m.type);
        }
    }

    /** @param {Joined} m */
    _gotJoined(m) {
        this._attempt = 0;
        this._layoutSent = '';
        this.resumeSecret = m.resume;
        this.self = m.participant;
        this.room = m.room;
        this.iceServers = m.ice_servers || [];
        this.queue = m.queue || [];
        this.participants.clear();
        this.participants.set(m.participant.id, m.participant);
        for (const p of m.participants || [])
            this.participants.set(p.id, p);
        this._setStatus('connected', m.resumed ? 'resumed' : 'joined');
        if (this.captionLanguage)
            this._sendCaptionLanguage();
        this.activeSpeaker = m.active_speaker || null;
        this.forwarded = null;
        this._sendReceivingPreferences();
        if (this.onjoined)
            this.onjoined(m);
        this._startPublishing();
    }

    /**
     * @param {'joined'|'updated'} kind
     * @param {Participant} p
     */
    _upsert(kind, p) {
        if (!p || !p.id)
            return;
        const known = this.participants.has(p.id);
        this.participants.set(p.id, p);
        if (this.self && p.id === this.self.id)
            this.self = p;
        if (this.onparticipant)
            this.onparticipant(known && kind === 'joined' ? 'updated' : kind, p);
    }

    /** @param {string|Participant} participant */
    _gotLeft(participant) {
        const id = typeof participant === 'string' ? participant : participant && participant.id;
        const p = this.participants.get(id);
        if (!p)
            return;
        this.participants.delete(id);
        if (this.onparticipant)
            this.onparticipant('left', p);
    }

    /** @param {string[]} ids */
    _gotSpeaking(ids) {
        for (const p of this.participants.values())
            p.speaking = ids.includes(p.id);
        if (this.onspeaking)
            this.onspeaking(ids);
    }

    /** @param {string} by */
    _gotMuted(by) {
        const mic = this.local.get('microphone');
        if (mic) {
            mic.enabled = false;
            if (mic.track)
                mic.track.enabled = false;
            if (mic.transceiver)
                mic.transceiver.sender.replaceTrack(null).catch(() => {});
        }
        if (this.onmuted)
            this.onmuted(by);
    }

    /** @param {ProtocolError} m */
    _gotError(m) {
        if (m.request === 'publish' && this._publishPending && m.id === this._publishPending.id) {
            const pending = this._publishPending;
            this._publishPending = null;
            pending.reject(new Error(`${m.code}: ${m.message}`));
        }
        if (this.onerror)
            this.onerror({code: m.code, message: m.message, request: m.request});
    }

    // ---- meeting requests ----------------------------------------------------

    /** @param {string} text */
    sendChat(text) {
        return this.send({type: 'chat', text});
    }

    /** @param {boolean} raised */
    raiseHand(raised) {
        return this.send({type: 'hand', raised});
    }

    /** @param {string} participant */
    mute(participant) {
        return this.send({type: 'mute', participant});
    }

    /** @param {string} participant */
    remove(participant) {
        return this.send({type: 'remove', participant});
    }

    /** @param {boolean} locked */
    lock(locked) {
        return this.send({type: 'lock', locked});
    }

    /**
     * @param {string} permission
     * @returns {boolean}
     */
    can(permission) {
        return !!this.self && (this.self.permissions || []).includes(permission);
    }

    // ---- captions --------------------------------------------------------------

    /**
     * Turn the room's captions on or off (a host only; the server checks).
     *
     * @param {boolean} enabled
     */
    setCaptions(enabled) {
        return this.send({type: 'captions', enabled});
    }

    /**
     * Read captions in `language` (ISO 639-1), or as spoken (`null`).  The
     * choice is sent again after every join.
     *
     * @param {string|null} language
     */
    setCaptionLanguage(language) {
        this.captionLanguage = language || null;
        return this._sendCaptionLanguage();
    }

    _sendCaptionLanguage() {
        return this.send({type: 'caption-language', language: this.captionLanguage});
    }

    /** @param {boolean} enabled */
    _gotCaptions(enabled) {
        if (this.room)
            this.room = {...this.room, captions: enabled};
        if (this.oncaptions)
            this.oncaptions(enabled);
    }

    // ---- receiving preferences: audio-only, pins, last-N ------------------------

    /**
     * Audio-only mode (`false`) or back to receiving video (`true`).  The
     * server pauses video at its end, so nothing is renegotiated.
     *
     * @param {boolean} video
     */
    setReceiveVideo(video) {
        this.receiveVideo = video;
        return this.send({type: 'receive', video});
    }

    /**
     * Always receive these participants' cameras (replaces earlier pins).
     *
     * @param {string[]} participants
     */
    pin(participants) {
        this.pins = [...participants];
        return this.send({type: 'pin', participants: this.pins});
    }

    /**
     * How many recent speakers' cameras everyone receives (a host only).
     *
     * @param {number} n
     */
    setLastN(n) {
        return this.send({type: 'last-n', n});
    }

    /**
     * Whether the server sends `participant`'s video to this page now.
     *
     * @param {string} participant
     * @returns {boolean}
     */
    isForwarded(participant) {
        return this.forwarded === null || this.forwarded.has(participant);
    }

    _sendReceivingPreferences() {
        if (!this.receiveVideo)
            this.send({type: 'receive', video: false});
        if (this.pins.length)
            this.send({type: 'pin', participants: this.pins});
    }

    /**
     * @param {string[]} ids
     * @param {boolean} lowBandwidth
     */
    _gotForwarding(ids, lowBandwidth) {
        this.forwarded = new Set(ids);
        this.lowBandwidth = lowBandwidth;
        if (this.onforwarding)
            this.onforwarding(this.forwarded);
    }

    /**
     * Nobody in the room can use the higher simulcast layers of `source` now:
     * the encoder sends only the lowest `layers` of them (it starts a layer
     * again with a keyframe when asked for more).
     *
     * @param {Source} source
     * @param {number} layers
     * @returns {Promise<void>}
     */
    async _gotSendLayers(source, layers) {
        const local = this.local.get(source);
        const sender = local && local.transceiver ? local.transceiver.sender : null;
        if (!sender || typeof layers !== 'number')
            return;
        const parameters = sender.getParameters();
        const encodings = parameters.encodings || [];
        if (encodings.length < 2)
            return;
        let changed = false;
        encodings.forEach((encoding, index) => {
            const active = index < Math.max(1, layers);
            if (encoding.active !== active) {
                encoding.active = active;
                changed = true;
            }
        });
        if (changed)
            await sender.setParameters(parameters);
    }

    /** @param {string|null} participant */
    _gotActiveSpeaker(participant) {
        this.activeSpeaker = participant;
        if (this.onactivespeaker)
            this.onactivespeaker(participant);
    }

    // ---- publishing ------------------------------------------------------------

    /**
     * Publish `track` as `source`, replace the track already published there
     * (a device switch, no renegotiation), or stop publishing the source
     * (`null`).  Before joining, and while reconnecting, the track is kept
     * and published once the server has answered `joined`.
     *
     * @param {Source} source
     * @param {MediaStreamTrack|null} track
     * @returns {Promise<void>}
     */
    async setTrack(source, track) {
        let local = this.local.get(source);
        if (!track) {
            if (!local)
                return;
            this.local.delete(source);
            if (local.transceiver && this.publishTransport) {
                try {
                    local.transceiver.stop();
                } catch (e) {
                    // transport already closed
                }
                return this._negotiatePublish();
            }
            return;
        }
        if (!local) {
            local = {track: null, enabled: true, transceiver: null, announced: false};
            this.local.set(source, local);
        }
        local.track = track;
        track.enabled = local.enabled;
        if (local.transceiver && this.publishTransport) {
            await local.transceiver.sender.replaceTrack(local.enabled ? track : null);
            return;
        }
        if (this.publishTransport && this.can('publish')) {
            this._addTransceiver(this.publishTransport, source, local);
            return this._negotiatePublish();
        }
    }

    /**
     * Pause or resume a published source; the transceiver is kept and the
     * server is told with `media`.
     *
     * @param {Source} source
     * @param {boolean} enabled
     */
    async setEnabled(source, enabled) {
        const local = this.local.get(source);
        if (!local)
            return;
        local.enabled = enabled;
        if (local.track)
            local.track.enabled = enabled;
        if (local.transceiver)
            await local.transceiver.sender.replaceTrack(enabled ? local.track : null);
        if (local.announced)
            this.send({type: 'media', source, enabled});
    }

    /**
     * @param {Source} source
     * @returns {boolean}
     */
    isEnabled(source) {
        const local = this.local.get(source);
        return !!local && local.enabled && !!local.track;
    }

    /**
     * @param {RTCPeerConnection} pc
     * @param {Source} source
     * @param {LocalSource} local
     */
    _addTransceiver(pc, source, local) {
        const kind = source === 'microphone' ? 'audio' : 'video';
        /** @type {RTCRtpTransceiverInit} */
        const init = {direction: 'sendonly'};
        if (source === 'camera')
            init.sendEncodings = CAMERA_ENCODINGS.map((e) => ({...e}));
        local.transceiver = pc.addTransceiver(
            local.enabled && local.track ? local.track : kind, init);
        local.announced = false;
    }

    /**
     * Tell the server the size each received video is shown at (CSS pixels
     * times devicePixelRatio; 0×0 when hidden), so it sends no larger layer.
     * Sends nothing when the layout did not change.
     *
     * @param {Layout} consumers
     */
    setLayout(consumers) {
        const json = JSON.stringify(consumers);
        if (json === this._layoutSent)
            return;
        if (this.send({type: 'layout', consumers}))
            this._layoutSent = json;
    }

    /** After `joined`: a fresh publishing transport carrying every kept track. */
    _startPublishing() {
        if (!this.can('publish'))
            return;
        const pc = new RTCPeerConnection({iceServers: this.iceServers});
        this.publishTransport = pc;
        this._watchConnection(pc, () => {
            // The server answers with `publish-restart`, once it has let the old one go.
            if (pc === this.publishTransport)
                this.send({type: 'publish-lost'});
        });
        let any = false;
        for (const source of SOURCES) {
            const local = this.local.get(source);
            if (local && local.track) {
                this._addTransceiver(pc, source, local);
                any = true;
            }
        }
        if (any)
            this._negotiatePublish().catch(() => {});
    }

    /**
     * Offer on the publishing transport and wait for `publish-answer`.
     * Calls made while a negotiation runs are folded into one more round.
     *
     * @returns {Promise<void>}
     */
    _negotiatePublish() {
        this._publishWanted = true;
        const run = async () => {
            while (this._publishWanted) {
                this._publishWanted = false;
                const pc = this.publishTransport;
                if (!pc || pc.signalingState === 'closed')
                    return;
                await this._publishOnce(pc);
            }
        };
        const next = this._publishChain.then(run, run);
        this._publishChain = next.catch((e) => {
            console.warn('townhall: publishing failed:', e);
        });
        return next;
    }

    /** @param {RTCPeerConnection} pc */
    async _publishOnce(pc) {
        const offer = await pc.createOffer();
        await pc.setLocalDescription(offer);
        if (pc !== this.publishTransport)
            return;  // replaced meanwhile: this offer is nobody's
        /** @type {{mid: string, source: Source}[]} */
        const tracks = [];
        /** @type {Source[]} */
        const listed = [];
        for (const [source, local] of this.local) {
            const t = local.transceiver;
            if (t && t.mid !== null && t.currentDirection !== 'stopped' && t.direction !== 'stopped') {
                tracks.push({mid: t.mid, source});
                listed.push(source);
            }
        }
        // The id tells this offer's answer (or error) from a late one meant for an earlier
        // offer, such as one on a connection the server has since lost.
        const id = ++this._requestId;
        const answer = new Promise((resolve, reject) => {
            this._publishPending = {resolve, reject, id};
        });
        /** @type {Record<string, unknown>} */
        const message = {type: 'publish', id, sdp: pc.localDescription ? pc.localDescription.sdp : offer.sdp, tracks};
        if (this._publishRestart)
            message.restart = true;
        if (!this.send(message)) {
            this._publishPending = null;
            throw new Error('not connected');
        }
        this._publishRestart = false;
        const sdp = /** @type {string} */ (await answer);
        if (pc !== this.publishTransport || pc.signalingState === 'closed')
            return;
        await pc.setRemoteDescription({type: 'answer', sdp});
        for (const source of listed) {
            const local = this.local.get(source);
            if (!local)
                continue;
            const first = !local.announced;
            local.announced = true;
            if (first && !local.enabled)
                this.send({type: 'media', source, enabled: false});
        }
    }

    /** @param {{sdp: string, id?: number}} m */
    _gotPublishAnswer(m) {
        const pending = this._publishPending;
        if (!pending || m.id !== pending.id)
            return;
        this._publishPending = null;
        pending.resolve(m.sdp);
    }

    /**
     * The server lost the connection this page published on (`publish-restart`):
     * publish every kept track again on a new one.
     */
    _restartPublishing() {
        this._closePublishing('publishing connection lost');
        // A negotiation still running on the closed connection never settles: do not wait.
        this._publishChain = Promise.resolve();
        this._publishRestart = true;
        this._startPublishing();
    }

    // ---- receiving -------------------------------------------------------------

    /** @param {{sdp: string, consumers: ConsumerInfo[]}} m */
    _gotSubscribeOffer(m) {
        const generation = this._generation;
        this._subscribeChain = this._subscribeChain.then(async () => {
            if (generation !== this._generation)
                return;
            await this._answerSubscribe(m);
        }).catch((e) => {
            console.warn('townhall: answering subscribe-offer failed:', e);
        });
    }

    /** @param {{sdp: string, consumers: ConsumerInfo[], connection?: number}} m */
    async _answerSubscribe(m) {
        let pc = this.subscribeTransport;
        const connection = typeof m.connection === 'number' ? m.connection : null;
        if (pc && connection !== this._subscribeConnection) {
            // The server lost the receiving connection and offers everything on a new one.
            this._closeReceiving();
            pc = null;
        }
        if (!pc) {
            const created = new RTCPeerConnection({iceServers: this.iceServers});
            pc = created;
            this.subscribeTransport = created;
            this._subscribeConnection = connection;
            if (connection !== null) {
                this._watchConnection(created, () => {
                    if (created === this.subscribeTransport)
                        this.send({type: 'receive-lost', connection});
                });
            }
        }
        await pc.setRemoteDescription({type: 'offer', sdp: m.sdp});
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        /** @type {Record<string, unknown>} */
        const reply = {
            type: 'subscribe-answer',
            sdp: pc.localDescription ? pc.localDescription.sdp : answer.sdp,
        };
        if (connection !== null)
            reply.connection = connection;
        this.send(reply);

        /** @type {Map<string, ConsumerInfo>} */
        const wanted = new Map();
        for (const c of m.consumers || [])
            wanted.set(c.mid, c);
        for (const [mid, old] of this.consumers) {
            const now = wanted.get(mid);
            if (!now || now.producer !== old.producer) {
                this.consumers.delete(mid);
                if (this.onconsumerclose)
                    this.onconsumerclose(old);
            }
        }
        for (const t of pc.getTransceivers()) {
            if (t.mid === null)
                continue;
            const info = wanted.get(t.mid);
            if (!info || this.consumers.has(t.mid))
                continue;
            this.consumers.set(t.mid, info);
            if (this.onconsumer)
                this.onconsumer(t.receiver.track, info);
        }
    }

    /**
     * Call `lost` once when `pc` fails, or stays `disconnected` for DISCONNECTED_LIMIT_MS.
     * The server does not restart ICE: the page reports the connection lost (`publish-lost`,
     * `receive-lost`) and the server replaces it with a new one.
     *
     * @param {RTCPeerConnection} pc
     * @param {() => void} lost
     */
    _watchConnection(pc, lost) {
        /** @type {ReturnType<typeof setTimeout>|null} */
        let timer = null;
        let over = false;
        const giveUp = () => {
            if (timer !== null)
                clearTimeout(timer);
            timer = null;
            if (!over) {
                over = true;
                lost();
            }
        };
        pc.addEventListener('connectionstatechange', () => {
            const state = pc.connectionState;
            if (state === 'failed') {
                giveUp();
            } else if (state === 'disconnected') {
                if (timer === null)
                    timer = setTimeout(() => {
                        timer = null;
                        if (pc.connectionState === 'disconnected')
                            giveUp();
                    }, DISCONNECTED_LIMIT_MS);
            } else {
                if (timer !== null)
                    clearTimeout(timer);
                timer = null;
                if (state === 'closed')
                    over = true;
            }
        });
    }

    _closeTransports() {
        this._closeReceiving();
        this._closePublishing('connection lost');
        this._publishRestart = false;
        this._subscribeChain = Promise.resolve();
    }

    /** Close the receiving transport; every received track is announced closed. */
    _closeReceiving() {
        for (const info of this.consumers.values())
            if (this.onconsumerclose)
                this.onconsumerclose(info);
        this.consumers.clear();
        if (this.subscribeTransport)
            this.subscribeTransport.close();
        this.subscribeTransport = null;
        this._subscribeConnection = null;
    }

    /**
     * Close the publishing transport (a publish waiting for its answer fails with
     * `why`); local tracks are kept for the next one.
     *
     * @param {string} why
     */
    _closePublishing(why) {
        if (this._publishPending) {
            const pending = this._publishPending;
            this._publishPending = null;
            pending.reject(new Error(why));
        }
        if (this.publishTransport)
            this.publishTransport.close();
        this.publishTransport = null;
        for (const local of this.local.values()) {
            local.transceiver = null;
            local.announced = false;
        }
    }
}
