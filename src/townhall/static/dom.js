// @ts-check
// Small DOM helpers shared by the meeting page and the administrator page.

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{new(): T}} type
 * @returns {T}
 */
export function byId(id, type) {
    const element = document.getElementById(id);
    if (!(element instanceof type))
        throw new Error(`#${id} is missing or not a ${type.name}`);
    return element;
}

/**
 * @param {string} tag
 * @param {Record<string, string>} [attributes]
 * @param {string} [text]
 * @returns {HTMLElement}
 */
export function make(tag, attributes = {}, text = '') {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes))
        element.setAttribute(key, value);
    if (text)
        element.textContent = text;
    return element;
}
