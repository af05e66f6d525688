// @ts-check
// townhall captions, without DOM: the languages a listener can choose, and the bookkeeping of the
// caption lines a page shows (partials replaced in place by the final, old lines trimmed).

/**
 * @typedef {import('./protocol.js').Caption} Caption
 *
 * @typedef {Object} CaptionLine
 * @property {string} key          speaker and utterance
 * @property {string} participant
 * @property {string} name
 * @property {string} utterance
 * @property {boolean} final
 * @property {string} text         in the listener's language where a translation came
 * @property {string} lang         the language `text` is in
 * @property {string} original
 * @property {string} language     the language spoken
 * @property {string|null} translated
 *
 * @typedef {Object} CaptionChange
 * @property {CaptionLine|null} line   the line added or updated (null: nothing to show)
 * @property {boolean} added           `line` is new
 * @property {CaptionLine[]} removed   lines to take away
 */

/**
 * The caption languages offered in the menu: ISO 639-1 code ('' for the original) and label.
 *
 * @type {ReadonlyArray<readonly [string, string]>}
 */
export const CAPTION_LANGUAGES = Object.freeze([
    ['', 'Original (as spoken)'],
    ['en', 'English'],
    ['ru', 'Russian — русский'],
    ['uk', 'Ukrainian — українська'],
    ['be', 'Belarusian — беларуская'],
    ['pl', 'Polish — polski'],
    ['de', 'German — Deutsch'],
    ['fr', 'French — français'],
    ['es', 'Spanish — español'],
    ['ka', 'Georgian — ქართული'],
    ['kk', 'Kazakh — қазақ тілі'],
    ['ro', 'Romanian — română'],
    ['tr', 'Turkish — Türkçe'],
]);

/**
 * The saved choice if the menu offers it, else '' (the original).
 *
 * @param {string|null} saved
 * @returns {string}
 */
export function knownLanguage(saved) {
    return CAPTION_LANGUAGES.some(([code]) => code === saved) ? /** @type {string} */ (saved) : '';
}

/**
 * @param {string} participant
 * @param {string} utterance
 * @returns {string}
 */
export function captionKey(participant, utterance) {
    return `${participant}\u0000${utterance}`;
}

/** The last few caption lines, oldest first. */
export class CaptionLog {
    /** @param {number} [limit]  how many lines are kept */
    constructor(limit = 6) {
        /** @type {number} */
        this.limit = limit;
        /** @type {CaptionLine[]} */
        this.lines = [];
    }

    /**
     * Take in one `caption` message.
     *
     * @param {Caption} caption
     * @returns {CaptionChange}
     */
    add(caption) {
        const key = captionKey(caption.participant, caption.utterance);
        const index = this.lines.findIndex((l) => l.key === key);
        const existing = index >= 0 ? this.lines[index] : null;
        /** @type {CaptionChange} */
        const change = {line: null, added: false, removed: []};
        if (existing && existing.final && !caption.final)
            return change;   // a partial that arrived after its final
        if (caption.final && !caption.text.trim()) {
            // Nothing was said after all: the partial goes away.
            if (existing) {
                this.lines.splice(index, 1);
                change.removed.push(existing);
            }
            return change;
        }
        /** @type {CaptionLine} */
        const line = existing || {
            key, participant: caption.participant, name: caption.name,
            utterance: caption.utterance, final: false, text: '', lang: '', original: '',
            language: '', translated: null,
        };
        line.name = caption.name;
        line.final = caption.final;
        line.text = caption.text;
        line.original = caption.original;
        line.language = caption.language;
        line.translated = caption.translated;
        line.lang = caption.translated || caption.language;
        change.line = line;
        if (!existing) {
            this.lines.push(line);
            change.added = true;
        }
        while (this.lines.length > this.limit) {
            const old = /** @type {CaptionLine} */ (this.lines.shift());
            change.removed.push(old);
        }
        return change;
    }

    clear() {
        this.lines = [];
    }
}
