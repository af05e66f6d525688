// @ts-check
// townhall administration page: create rooms and invite links, switch captions.

import {byId, make} from './dom.js';

/**
 * @typedef {{id: string, name: string, locked: boolean, captions?: boolean}} Room
 * @typedef {{url: string, token: string, role: string, expires_at: string|number|null}} Invite
 */

/** An HTTP answer with an `{error: {code, message}}` body. */
class ApiError extends Error {
    /**
     * @param {number} status
     * @param {string} code
     * @param {string} message
     */
    constructor(status, code, message) {
        super(message);
        this.status = status;
        this.code = code;
    }
}

const ROLES = /** @type {const} */ (['host', 'speaker', 'listener']);

const ui = {
    missing: byId('admin-missing', HTMLElement),
    create: byId('create', HTMLElement),
    createForm: byId('create-form', HTMLFormElement),
    roomName: byId('room-name', HTMLInputElement),
    roomsSection: byId('rooms-section', HTMLElement),
    rooms: byId('rooms', HTMLElement),
    empty: byId('rooms-empty', HTMLElement),
    ttl: byId('invite-ttl', HTMLSelectElement),
    notices: byId('notices', HTMLElement),
};

/** @param {string} text */
function notify(text) {
    const p = make('p', {class: 'notice'}, text);
    ui.notices.append(p);
    setTimeout(() => p.remove(), 10000);
}

/**
 * @param {string} token
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function api(token, method, path, body) {
    /** @type {Record<string, string>} */
    const headers = {Authorization: `Bearer ${token}`};
    if (body !== undefined)
        headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
        data = await response.json();
    } catch (e) {
        // an empty or non-JSON body
    }
    if (!response.ok) {
        const error = data && data.error ? data.error : {};
        throw new ApiError(response.status, error.code || String(response.status),
            error.message || response.statusText);
    }
    return data;
}

/**
 * @param {string|number|null} at
 * @returns {string}
 */
function formatTime(at) {
    if (at === null || at === undefined || at === '')
        return 'never';
    const date = typeof at === 'number' ? new Date(at < 1e12 ? at * 1000 : at) : new Date(at);
    return isNaN(date.getTime()) ? String(at) : date.toLocaleString();
}

/**
 * @param {string} token
 * @param {Room} room
 * @returns {HTMLElement}
 */
function roomItem(token, room) {
    const li = make('li', {class: 'room', 'data-room': room.id});
    const title = make('h3', {}, room.name);
    const meta = make('p', {class: 'room-meta'},
        `${room.locked ? 'locked' : 'open'} · id ${room.id}`);
    const buttons = make('p', {class: 'invite-buttons'});
    const links = make('ul', {class: 'invites', 'aria-label': `Invite links for ${room.name}`});
    for (const role of ROLES) {
        const button = make('button', {type: 'button', 'data-role': role,
            'aria-label': `New ${role} link for ${room.name}`}, `New ${role} link`);
        button.addEventListener('click', async () => {
            /** @type {{role: string, ttl?: number}} */
            const body = {role};
            if (ui.ttl.value)
                body.ttl = Number(ui.ttl.value);
            try {
                /** @type {Invite} */
                const invite = await api(token, 'POST',
                    `/api/rooms/${encodeURIComponent(room.id)}/invites`, body);
                links.append(inviteItem(invite));
            } catch (e) {
                notify(`Could not make a ${role} link: ${e instanceof Error ? e.message : e}`);
            }
        });
        buttons.append(button, ' ');
    }
    li.append(title, meta, captionsSwitch(token, room), buttons, links);
    return li;
}

/**
 * The room's captions setting, as a switch (PATCH /api/rooms/{room}).
 *
 * @param {string} token
 * @param {Room} room
 * @returns {HTMLElement}
 */
function captionsSwitch(token, room) {
    const button = make('button', {type: 'button', 'data-action': 'captions'});
    const show = () => {
        button.setAttribute('aria-pressed', room.captions ? 'true' : 'false');
        button.textContent = room.captions ? 'Captions on' : 'Captions off';
        button.title = room.captions ? 'Turn captions off' : 'Turn captions on';
    };
    button.addEventListener('click', async () => {
        try {
            /** @type {Room} */
            const changed = await api(token, 'PATCH', `/api/rooms/${encodeURIComponent(room.id)}`,
                {captions: !room.captions});
            room.captions = !!changed.captions;
            show();
            notify(`Captions in “${room.name}” are ${room.captions ? 'on' : 'off'}.`);
        } catch (e) {
            notify(`Could not change captions: ${e instanceof Error ? e.message : e}`);
        }
    });
    show();
    const wrap = make('p', {class: 'room-captions'});
    wrap.append(button);
    return wrap;
}

/**
 * @param {Invite} invite
 * @returns {HTMLElement}
 */
function inviteItem(invite) {
    const url = new URL(invite.url, location.href).href;
    const li = make('li', {class: 'invite', 'data-role': invite.role});
    const id = `invite-${invite.token.slice(0, 12).replace(/[^A-Za-z0-9_-]/g, '')}-${Math.random().toString(36).slice(2, 8)}`;
    const label = make('label', {for: id},
        `${invite.role} link (expires ${formatTime(invite.expires_at)})`);
    const input = /** @type {HTMLInputElement} */ (make('input', {
        id, type: 'url', readonly: '', value: url, class: 'invite-url', 'data-role': invite.role,
    }));
    const copy = make('button', {type: 'button', 'aria-label': `Copy the ${invite.role} link`}, 'Copy');
    copy.addEventListener('click', async () => {
        input.select();
        try {
            await navigator.clipboard.writeText(url);
            notify('Link copied.');
        } catch (e) {
            notify('Select the link and copy it.');
        }
    });
    const open = make('a', {href: url, target: '_blank', rel: 'noopener'}, 'Open');
    li.append(label, ' ', input, ' ', copy, ' ', open);
    return li;
}

/** @param {string} token */
async function loadRooms(token) {
    const data = await api(token, 'GET', '/api/rooms');
    /** @type {Room[]} */
    const rooms = Array.isArray(data) ? data : (data && data.rooms) || [];
    ui.rooms.replaceChildren(...rooms.map((room) => roomItem(token, room)));
    ui.empty.hidden = rooms.length > 0;
}

async function main() {
    const token = new URLSearchParams(location.search).get('admin');
    if (!token) {
        ui.missing.hidden = false;
        return;
    }
    ui.create.hidden = false;
    ui.roomsSection.hidden = false;
    ui.createForm.addEventListener('submit', async (e) => {
        e.preventDefault();
        const name = ui.roomName.value.trim();
        if (!name)
            return;
        try {
            /** @type {Room} */
            const room = await api(token, 'POST', '/api/rooms', {name});
            ui.roomName.value = '';
            const existing = ui.rooms.querySelector(`[data-room="${CSS.escape(room.id)}"]`);
            if (!existing)
                ui.rooms.prepend(roomItem(token, room));
            ui.empty.hidden = true;
            notify(`Room “${room.name}” created.`);
        } catch (e) {
            notify(`Could not create the room: ${e instanceof Error ? e.message : e}`);
        }
    });
    try {
        await loadRooms(token);
    } catch (e) {
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
            ui.missing.hidden = false;
            ui.missing.textContent = 'This administrator link is not valid.';
            ui.create.hidden = true;
            ui.roomsSection.hidden = true;
        } else {
            notify(`Could not list rooms: ${e instanceof Error ? e.message : e}`);
        }
    }
}

main();
