/* townhall.sfu._fastsend.AudioTick: a router's audio work of one tick (AudioActivity.tick) in C.
 *
 *     AudioTick(activity, *, voices, speaker, speaking_hold, selection, narrow)
 *     tick(producers, now) -> activity(speaking, dominant, forwarded, ranked, unlevelled)
 *
 * It must stay IDENTICAL, bit for bit and order for order, to the Python path it stands in for:
 * AudioActivity.tick (audio_activity.py), Voices and DominantSpeaker (speaker.py), AudioSelection
 * (audio_selection.py), and Producer.take_levels, .speaking and .set_selected (producer.py). Who
 * is forwarded and who is dominant must not depend on whether the native piece was built;
 * tests/test_audio_activity.py runs both paths through the same random meetings and compares
 * everything after every tick. Change one side, change the other.
 *
 * What "identical" takes:
 * - the same double arithmetic in the same order (the build turns off fused multiply-adds);
 * - the orders Python's containers give: a dict iterates in insertion order, deleting a key
 *   leaves the others in theirs and a new key goes last; max() and min() keep the FIRST best;
 *   sorted() is stable, with reverse=True too;
 * - the forwarded frozenset built as Python builds it, from a dict holding the same keys in the
 *   same order: the narrow selection iterates it, and between newcomers equally loud that
 *   iteration order decides (a frozenset built from a list can lay its table out otherwise);
 * - keys matched as a dict matches them: the same object, or an equal hash and ==.
 *
 * The parameters come from Python when the object is made (speaker.py's constants, the defaults
 * of DominantSpeaker and of the two AudioSelections, producer.SPEAKING_HOLD): one source of
 * truth. One `now` serves the whole tick, where Python reads its clock several times (equal
 * under the injected clocks of tests).
 *
 * The state lives here: the voices by producer id and by owner (DominantSpeaker's own), the
 * dominant speaker, both selections and the last ranked tuple. The producers' own state (level
 * counters, loud_until, selected) stays in their Python objects, read and written as their
 * methods do; set_selected() is called, as the Python method it is, only when the value changes
 * (it restarts the producer's consumers then).
 *
 * Errors (a producer lacking an attribute, set_selected raising) come out as Python's exception,
 * met in the order Python's path meets them: one in the loop over the producers leaves the
 * tick's own state untouched (level counters already taken stay taken, as in Python); one later
 * (`selected` or `loud_until` missing, set_selected raising) leaves what was decided decided,
 * as in Python. The objects a tick returns are the last tick's whenever they are unchanged, the
 * Activity itself included: most ticks allocate nothing.
 */

#include "_audio.h"

#include <math.h>
#include <structmember.h>

/* ---- A producer's attributes ----
 *
 * A tick reads or writes about ten attributes of each audio producer, and Producer declares
 * __slots__: a slot's value sits at a fixed offset in the object, found once per type from the
 * type's member descriptor and kept while the type's version tag says the type is unchanged.
 * That halves a warm tick's time (the generic lookup goes through the type's attribute cache
 * and the descriptor each time; measured with 20 producers). Anything else (an attribute in a __dict__, a property, a
 * class with its own __getattribute__ or __setattr__, a changed class, an empty slot) goes
 * through PyObject_GetAttr/SetAttr, errors included. _fastsend.c does the same for the fan-out
 * with its own names; the two stay apart so that neither depends on the other's tables. */

enum {
    A_KIND, A_LEVEL_PACKETS, A_LOUDNESS, A_LOUD_UNTIL, A_PAUSED, A_LEVEL_EXTENSION, A_ID,
    A_OWNER, A_SELECTED, A_COUNT
};
static const char *const attribute_texts[A_COUNT] = {
    "kind", "level_packets", "loudness", "loud_until", "paused", "level_extension", "id",
    "owner", "selected",
};
static PyObject *attribute_names[A_COUNT];
static PyObject *s_audio, *s_set_selected, *zero;

/* Where attribute `name` lives in objects of one type (the last type seen: a router's
 * producers are all of one class). */
typedef struct {
    PyTypeObject *type;
    unsigned int version;
    Py_ssize_t offset;  /* 0: not a writable object slot of the type */
} SlotPlace;

static SlotPlace slot_places[A_COUNT];

/* The address of the slot holding attribute `name` in `object`, or NULL: no slot to use. */
static PyObject **slot_of(PyObject *object, int name) {
    PyTypeObject *type = Py_TYPE(object);
    SlotPlace *place = &slot_places[name];
    if (place->type != type || place->version != type->tp_version_tag ||
            !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        PyObject *descriptor = _PyType_Lookup(type, attribute_names[name]);  /* borrowed; it
                                                                              * tags the type */
        place->type = NULL;
        if (!PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG))
            return NULL;
        Py_ssize_t offset = 0;
        if (descriptor != NULL && Py_TYPE(descriptor) == &PyMemberDescr_Type &&
                type->tp_getattro == PyObject_GenericGetAttr &&
                type->tp_setattro == PyObject_GenericSetAttr) {
            PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
                offset = member->offset;
        }
        place->type = type;
        place->version = type->tp_version_tag;
        place->offset = offset;
    }
    return place->offset ? (PyObject **)((char *)object + place->offset) : NULL;
}

/* A new reference to the attribute, or NULL with an exception set (AttributeError for an empty
 * slot, from PyObject_GetAttr). */
static PyObject *get_attribute(PyObject *object, int name) {
    PyObject **slot = slot_of(object, name);
    if (slot != NULL && *slot != NULL)
        return Py_NewRef(*slot);
    return PyObject_GetAttr(object, attribute_names[name]);
}

/* Sets the attribute to `value` (not stolen); -1 with an exception set. */
static int set_attribute(PyObject *object, int name, PyObject *value) {
    PyObject **slot = slot_of(object, name);
    if (slot == NULL)
        return PyObject_SetAttr(object, attribute_names[name], value);
    PyObject *old = *slot;
    *slot = Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

/* A key as a dict holds it; the first member of every keyed record below, so that one search
 * serves them all. */
typedef struct {
    PyObject *key;
    Py_hash_t hash;
} Key;

/* speaker.Voice, with DominantSpeaker._ahead_since[key] kept beside it: that dict only ever
 * holds keys that have a voice (a voice forgotten in a tick loses its entry in the same tick),
 * and nothing iterates it. */
typedef struct {
    Key k;  /* owned */
    double fast, slow;
    double active_at;  /* -inf: never */
    double since;  /* when has_since */
    double ahead_since;  /* when has_ahead */
    char has_since, has_ahead;
} Voice;

/* speaker.Voices: in the dict's order. */
typedef struct {
    Voice *items;
    Py_ssize_t count, capacity;
} Voices;

/* A selected key and when it was selected (AudioSelection._selected), with its fast average
 * while a tick decides. */
typedef struct {
    Key k;  /* owned */
    double at;
    double fast;
} Place;

typedef struct {
    Place *items;  /* in the dict's order */
    Py_ssize_t count, capacity;
    Py_ssize_t size;
    int everyone_when_few;
    double hangover, hold, margin;
} Selection;

enum { MUTED, UNLEVELLED, UNMUTED };

/* One audio producer of this tick, in the order the producers came. */
typedef struct {
    PyObject *producer, *id, *owner;  /* owned; id stays NULL for a muted one (never read) */
    int state;
    int loud;  /* take_levels set loud_until to now + speaking_hold */
} Entry;

/* One entry of the tick's `scores` (by producer id) or `by_owner` dict, in the dict's order.
 * The key is borrowed from an Entry. */
typedef struct {
    Key k;
    double score;
    Py_ssize_t voice;  /* its voice once the voices took the scores */
} Score;

/* A key a selection chooses among, with what fast() and recent() read of its voice (the key is
 * borrowed). */
typedef struct {
    Key k;
    double fast;
    double active_at;
    int voiced;
} Candidate;

typedef struct {
    PyObject_HEAD
    PyTypeObject *activity;  /* what tick() returns: audio_activity.Activity */
    double speech, fast, slow, word_gap;  /* speaker.py */
    double onset, hold, handover, overtake, margin;  /* DominantSpeaker */
    double speaking_hold;  /* producer.py */
    Voices voices;  /* AudioActivity.voices: by producer id */
    Voices owners;  /* DominantSpeaker.voices: by owner */
    PyObject *dominant;  /* DominantSpeaker.dominant (NULL: None) */
    Py_hash_t dominant_hash;
    double dominant_since;
    Selection selection, narrow;
    PyObject *last_ranked;  /* AudioActivity._last_ranked (NULL: the empty tuple) */
    /* The last results, and the objects in the order they were made from: the same objects in
     * the same order make the same result (the same table, for a frozenset), so it is kept. */
    PyObject *forwarded, *forwarded_from;
    PyObject *speaking, *speaking_from;
    PyObject *unlevelled, *unlevelled_from;
    PyObject *last;  /* the last Activity */
    int busy;  /* in tick(): set_selected() runs Python, which must not come back in */
    /* One tick's working space, kept from tick to tick. */
    Entry *entries;
    Py_ssize_t entry_count, entries_capacity;
    Score *scores, *by_owner;
    Py_ssize_t score_count, owner_count, scores_capacity, by_owner_capacity;
    Candidate *candidates;
    Py_ssize_t candidates_capacity;
    Place *places;
    Py_ssize_t places_capacity;
    Py_ssize_t *indices;
    Py_ssize_t indices_capacity;
    PyObject **objects;  /* borrowed */
    Py_ssize_t objects_capacity;
} AudioTick;

/* Room for `need` items of `size` bytes in `*buffer`; -1 with MemoryError. */
static int reserve(void **buffer, Py_ssize_t *capacity, Py_ssize_t need, size_t size) {
    if (need <= *capacity)
        return 0;
    Py_ssize_t grown = *capacity ? *capacity : 16;
    while (grown < need)
        grown *= 2;
    void *made = PyMem_Realloc(*buffer, (size_t)grown * size);
    if (made == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buffer = made;
    *capacity = grown;
    return 0;
}

#define RESERVE(buffer, capacity, need) \
    reserve((void **)&(buffer), &(capacity), (need), sizeof *(buffer))

/* The index of `key` among `count` records of `stride` bytes that start with a Key, -1 if it is
 * not there, -2 with an exception set if == raised. The search by identity starts at `hint`:
 * from tick to tick the producers come in the same order as their voices, so the usual key is
 * found at once. Only then equal hashes are compared with ==, as a dict does (the keys of one
 * table are unique, so which pass finds one does not matter). */
static Py_ssize_t find(const void *records, size_t stride, Py_ssize_t count, PyObject *key,
                       Py_hash_t hash, Py_ssize_t hint) {
    const char *base = records;
    Py_ssize_t j = hint < 0 || hint >= count ? 0 : hint;
    for (Py_ssize_t n = 0; n < count; n++) {
        if (((const Key *)(base + (size_t)j * stride))->key == key)
            return j;
        if (++j == count)
            j = 0;
    }
    for (j = 0; j < count; j++) {
        const Key *other = (const Key *)(base + (size_t)j * stride);
        if (other->hash == hash) {
            int equal = PyObject_RichCompareBool(other->key, key, Py_EQ);
            if (equal < 0)
                return -2;
            if (equal)
                return j;
        }
    }
    return -1;
}

/* Drops the keys the records hold and empties them. */
static void clear_voices(Voices *voices) {
    Py_ssize_t count = voices->count;
    voices->count = 0;
    for (Py_ssize_t j = 0; j < count; j++)
        Py_DECREF(voices->items[j].k.key);
}

static void clear_places(Place *places, Py_ssize_t *count) {
    Py_ssize_t n = *count;
    *count = 0;
    for (Py_ssize_t j = 0; j < n; j++)
        Py_DECREF(places[j].k.key);
}

/* ---- Reading the producers: the loop at the top of AudioActivity.tick. ---- */

/* loudness / packets as Python's int / int gives it: for ints that a double holds exactly, one
 * division of doubles rounds correctly, as Python's does; others (never seen) go to Python. */
static int divide(PyObject *loudness, PyObject *packets, double *score) {
    if (PyLong_CheckExact(loudness) && PyLong_CheckExact(packets)) {
        int overflow_a, overflow_b;
        long long a = PyLong_AsLongLongAndOverflow(loudness, &overflow_a);
        long long b = PyLong_AsLongLongAndOverflow(packets, &overflow_b);
        const long long exact = 1LL << 53;
        if (!overflow_a && !overflow_b && a >= -exact && a <= exact && b >= -exact &&
                b <= exact) {
            if (b == 0) {
                PyErr_SetString(PyExc_ZeroDivisionError, "division by zero");
                return -1;
            }
            *score = (double)a / (double)b;
            return 0;
        }
    }
    PyObject *quotient = PyNumber_TrueDivide(loudness, packets);
    if (quotient == NULL)
        return -1;
    *score = PyFloat_AsDouble(quotient);
    Py_DECREF(quotient);
    return *score == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* Producer.take_levels: the score, and the counters reset. */
static int take_levels(AudioTick *self, Entry *entry, double now, double *score) {
    PyObject *producer = entry->producer;
    *score = 0.0;
    PyObject *packets = get_attribute(producer, A_LEVEL_PACKETS);
    if (packets == NULL)
        return -1;
    PyObject *loudness = get_attribute(producer, A_LOUDNESS);
    if (loudness == NULL) {
        Py_DECREF(packets);
        return -1;
    }
    int status = -1;
    if (set_attribute(producer, A_LEVEL_PACKETS, zero) < 0 ||
            set_attribute(producer, A_LOUDNESS, zero) < 0)
        goto done;
    int loud = PyObject_IsTrue(loudness);
    if (loud < 0)
        goto done;
    if (loud) {
        PyObject *until = PyFloat_FromDouble(now + self->speaking_hold);
        if (until == NULL)
            goto done;
        int set = set_attribute(producer, A_LOUD_UNTIL, until);
        Py_DECREF(until);
        if (set < 0)
            goto done;
        entry->loud = 1;
        if (divide(loudness, packets, score) < 0)
            goto done;
    }
    status = 0;
done:
    Py_DECREF(packets);
    Py_DECREF(loudness);
    return status;
}

/* 1 if the attribute is true, 0 if not, -1 with an exception set. */
static int attribute_true(PyObject *object, int name) {
    PyObject *value = get_attribute(object, name);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* producer.set_selected(selected), called only when `selected` changes: the method restarts the
 * consumers then, and does nothing otherwise. */
static int set_selected(PyObject *producer, int selected) {
    int current = attribute_true(producer, A_SELECTED);
    if (current < 0)
        return -1;
    if (current == selected)
        return 0;
    PyObject *result = PyObject_CallMethodOneArg(producer, s_set_selected,
                                                 selected ? Py_True : Py_False);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* scores[key] = score (keep_max 0), or by_owner[key] = max(score, by_owner.get(key, 0.0))
 * (keep_max 1): max() keeps its first argument unless the second is greater. */
static int put_score(Score *scores, Py_ssize_t *count, PyObject *key, double score,
                     int keep_max) {
    Py_hash_t hash = PyObject_Hash(key);
    if (hash == -1)
        return -1;
    Py_ssize_t j = find(scores, sizeof(Score), *count, key, hash, 0);
    if (j == -2)
        return -1;
    double before = 0.0;
    if (j == -1) {
        j = (*count)++;
        scores[j].k.key = key;
        scores[j].k.hash = hash;
        scores[j].voice = -1;
    } else {
        before = scores[j].score;
    }
    scores[j].score = keep_max && before > score ? before : score;
    return 0;
}

/* The loop over the producers: levels taken, scores by producer and by owner, the producers
 * without levels selected. Fills self->entries (whose references the caller drops, whatever
 * happens), self->scores and self->by_owner. */
static int read_producers(AudioTick *self, PyObject *producers, double now) {
    PyObject *iterator = PyObject_GetIter(producers);
    if (iterator == NULL)
        return -1;
    PyObject *producer;
    while ((producer = PyIter_Next(iterator)) != NULL) {
        PyObject *kind = get_attribute(producer, A_KIND);
        int audio = kind == NULL ? -1 : PyObject_RichCompareBool(kind, s_audio, Py_EQ);
        Py_XDECREF(kind);
        if (audio <= 0) {
            Py_DECREF(producer);
            if (audio < 0)
                goto error;
            continue;
        }
        Py_ssize_t n = self->entry_count;
        if (RESERVE(self->entries, self->entries_capacity, n + 1) < 0 ||
                RESERVE(self->scores, self->scores_capacity, n + 1) < 0 ||
                RESERVE(self->by_owner, self->by_owner_capacity, n + 1) < 0) {
            Py_DECREF(producer);
            goto error;
        }
        Entry *entry = &self->entries[n];
        entry->producer = producer;
        entry->id = entry->owner = NULL;
        entry->loud = 0;
        entry->state = MUTED;
        self->entry_count = n + 1;
        double score;
        if (take_levels(self, entry, now, &score) < 0)
            goto error;
        int paused = attribute_true(producer, A_PAUSED);
        if (paused < 0)
            goto error;
        if (paused) {
            score = 0.0;  /* muted: still in the meeting, not a candidate for anything */
        } else {
            PyObject *extension = get_attribute(producer, A_LEVEL_EXTENSION);
            if (extension == NULL)
                goto error;
            int unlevelled = extension == Py_None;
            Py_DECREF(extension);
            if (unlevelled) {
                /* nothing tells its speech from silence: always forwarded */
                entry->state = UNLEVELLED;
                if (set_selected(producer, 1) < 0 ||
                        (entry->id = get_attribute(producer, A_ID)) == NULL)
                    goto error;
            } else {
                entry->state = UNMUTED;
                if ((entry->id = get_attribute(producer, A_ID)) == NULL ||
                        put_score(self->scores, &self->score_count, entry->id, score, 0) < 0)
                    goto error;
            }
        }
        if ((entry->owner = get_attribute(producer, A_OWNER)) == NULL ||
                put_score(self->by_owner, &self->owner_count, entry->owner, score, 1) < 0)
            goto error;
    }
    if (PyErr_Occurred())
        goto error;
    Py_DECREF(iterator);
    return 0;
error:
    Py_DECREF(iterator);
    return -1;
}

/* ---- speaker.py ---- */

/* Voices.update(scores, now): keys missing from the scores are forgotten, the others smoothed;
 * each score learns the index of its voice. Nothing changes if it fails. */
static int voices_update(AudioTick *self, Voices *voices, Score *scores, Py_ssize_t n,
                         double now) {
    Py_ssize_t count = voices->count;
    if (RESERVE(voices->items, voices->capacity, count + n) < 0 ||
            RESERVE(self->indices, self->indices_capacity, count) < 0 ||
            RESERVE(self->objects, self->objects_capacity, count) < 0)
        return -1;
    Py_ssize_t *place = self->indices;  /* old index -> new (-1: forgotten) */
    for (Py_ssize_t j = 0; j < count; j++)
        place[j] = -1;
    Py_ssize_t hint = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t j = find(voices->items, sizeof(Voice), count, scores[i].k.key,
                            scores[i].k.hash, hint);
        if (j == -2)
            return -1;
        scores[i].voice = j;
        if (j >= 0) {
            place[j] = 0;
            hint = j + 1;
        }
    }
    /* The forgotten go; the others keep their order, as they do in a dict. */
    Py_ssize_t kept = 0, forgotten = 0;
    for (Py_ssize_t j = 0; j < count; j++) {
        if (place[j] < 0) {
            self->objects[forgotten++] = voices->items[j].k.key;
            continue;
        }
        place[j] = kept;
        voices->items[kept++] = voices->items[j];
    }
    voices->count = kept;
    for (Py_ssize_t j = 0; j < forgotten; j++)
        Py_DECREF(self->objects[j]);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t j = scores[i].voice;
        Voice *voice;
        if (j < 0) {  /* a new key goes last */
            j = voices->count++;
            voice = &voices->items[j];
            voice->k = scores[i].k;
            Py_INCREF(voice->k.key);
            voice->fast = voice->slow = 0.0;
            voice->active_at = -INFINITY;
            voice->has_since = voice->has_ahead = 0;
        } else {
            j = place[j];
            voice = &voices->items[j];
        }
        scores[i].voice = j;
        double score = scores[i].score;
        voice->fast += self->fast * (score - voice->fast);
        voice->slow += self->slow * (score - voice->slow);
        if (voice->fast >= self->speech) {
            voice->active_at = now;
            if (!voice->has_since) {
                voice->since = now;
                voice->has_since = 1;
            }
        } else if (now - voice->active_at > self->word_gap) {
            voice->has_since = 0;
        }
    }
    return 0;
}

/* Voice.speaking_for(now) >= onset */
static int candidate(const AudioTick *self, const Voice *voice, double now) {
    return (voice->has_since ? now - voice->since : 0.0) >= self->onset;
}

/* DominantSpeaker._take */
static void take(AudioTick *self, Py_ssize_t j, double now) {
    Voices *voices = &self->owners;
    Py_INCREF(voices->items[j].k.key);
    Py_XSETREF(self->dominant, voices->items[j].k.key);
    self->dominant_hash = voices->items[j].k.hash;
    self->dominant_since = now;
    for (Py_ssize_t i = 0; i < voices->count; i++)
        voices->items[i].has_ahead = 0;
}

/* DominantSpeaker.update(by_owner) */
static int speaker_update(AudioTick *self, double now) {
    Voices *voices = &self->owners;
    if (voices_update(self, voices, self->by_owner, self->owner_count, now) < 0)
        return -1;
    Voice *items = voices->items;
    Py_ssize_t count = voices->count, current = -1, best = -1;
    if (self->dominant != NULL) {
        current = find(items, sizeof(Voice), count, self->dominant, self->dominant_hash, 0);
        if (current == -2)
            return -1;
        if (current < 0)
            Py_CLEAR(self->dominant);
    }
    if (current < 0) {
        for (Py_ssize_t j = 0; j < count; j++)
            items[j].has_ahead = 0;
        for (Py_ssize_t j = 0; j < count; j++) {
            if (candidate(self, &items[j], now) && (best < 0 || items[j].slow > items[best].slow))
                best = j;
        }
        if (best >= 0)
            take(self, best, now);
        return 0;
    }
    const Voice *dominant = &items[current];
    int candidates = 0;
    for (Py_ssize_t j = 0; j < count; j++) {
        Voice *voice = &items[j];
        if (j != current && voice->slow > dominant->slow + self->margin) {
            if (!voice->has_ahead) {
                voice->has_ahead = 1;
                voice->ahead_since = now;
            }
        } else {
            voice->has_ahead = 0;
        }
        if (j != current && candidate(self, voice, now))
            candidates = 1;
    }
    if (!candidates || now - self->dominant_since < self->hold)
        return 0;
    int quiet = now - dominant->active_at >= self->handover;
    for (Py_ssize_t j = 0; j < count; j++) {
        const Voice *voice = &items[j];
        if (j == current || !candidate(self, voice, now))
            continue;
        if (!quiet && !(now - (voice->has_ahead ? voice->ahead_since : now) >= self->overtake))
            continue;
        if (best < 0 || voice->slow > items[best].slow)
            best = j;
    }
    if (best >= 0)
        take(self, best, now);
    return 0;
}

/* ---- audio_selection.py ---- */

static int recent(const Selection *selection, const Candidate *key, double now) {
    return key->voiced && now - key->active_at <= selection->hangover;
}

/* AudioSelection.update(keys, voices), the keys in `keys` in the order Python iterates them.
 * Nothing changes if it fails. */
static int selection_update(AudioTick *self, Selection *selection, const Candidate *keys,
                            Py_ssize_t n, double now) {
    const Place *old = selection->items;
    Py_ssize_t old_count = selection->count, count = 0;
    if (RESERVE(self->places, self->places_capacity, old_count + n) < 0 ||
            RESERVE(self->indices, self->indices_capacity, n) < 0)
        return -1;
    Place *kept = self->places;
    if (selection->everyone_when_few && n <= selection->size) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t j = find(old, sizeof(Place), old_count, keys[i].k.key, keys[i].k.hash, i);
            if (j == -2)
                goto error;
            kept[count].k = keys[i].k;
            kept[count].at = j >= 0 ? old[j].at : now;
            Py_INCREF(kept[count++].k.key);
        }
    } else {
        for (Py_ssize_t j = 0; j < old_count; j++) {
            Py_ssize_t i = find(keys, sizeof(Candidate), n, old[j].k.key, old[j].k.hash, j);
            if (i == -2)
                goto error;
            if (i >= 0 && recent(selection, &keys[i], now)) {
                kept[count] = old[j];
                kept[count].fast = keys[i].fast;
                Py_INCREF(kept[count++].k.key);
            }
        }
        /* the newcomers, loudest first, equals in the keys' order (sorted is stable) */
        Py_ssize_t *newcomers = self->indices, m = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t j = find(kept, sizeof(Place), count, keys[i].k.key, keys[i].k.hash, 0);
            if (j == -2)
                goto error;
            if (j < 0 && recent(selection, &keys[i], now))
                newcomers[m++] = i;
        }
        for (Py_ssize_t a = 1; a < m; a++) {
            Py_ssize_t i = newcomers[a], b = a;
            for (; b > 0 && keys[newcomers[b - 1]].fast < keys[i].fast; b--)
                newcomers[b] = newcomers[b - 1];
            newcomers[b] = i;
        }
        for (Py_ssize_t a = 0; a < m; a++) {
            const Candidate *key = &keys[newcomers[a]];
            if (count < selection->size) {
                kept[count].k = key->k;
                kept[count].at = now;
                kept[count].fast = key->fast;
                Py_INCREF(kept[count++].k.key);
                continue;
            }
            Py_ssize_t weakest = 0;  /* min() keeps the first of the weakest */
            for (Py_ssize_t j = 1; j < count; j++) {
                if (kept[j].fast < kept[weakest].fast)
                    weakest = j;
            }
            if (key->fast > kept[weakest].fast + selection->margin &&
                    now - kept[weakest].at >= selection->hold) {
                /* the others keep their order, the newcomer goes last (a dict's del, then
                 * a new key); the old selection holds the key, so this frees nothing */
                Py_DECREF(kept[weakest].k.key);
                memmove(&kept[weakest], &kept[weakest + 1],
                        (size_t)(count - weakest - 1) * sizeof(Place));
                kept[count - 1].k = key->k;
                kept[count - 1].at = now;
                kept[count - 1].fast = key->fast;
                Py_INCREF(key->k.key);
            }
        }
    }
    /* The working space becomes the selection, the old selection the working space. */
    Place *items = selection->items;
    Py_ssize_t capacity = selection->capacity;
    selection->items = kept;
    selection->capacity = self->places_capacity;
    selection->count = count;
    self->places = items;
    self->places_capacity = capacity;
    clear_places(items, &old_count);
    return 0;
error:
    clear_places(kept, &count);
    return -1;
}

/* The candidates of a selection: fast() and recent()'s view of each key's voice. */
static void describe(Candidate *candidate, const Voices *voices, Py_ssize_t j) {
    candidate->voiced = j >= 0;
    candidate->fast = j >= 0 ? voices->items[j].fast : 0.0;
    candidate->active_at = j >= 0 ? voices->items[j].active_at : 0.0;
}

/* ---- The results ---- */

/* Whether `tuple` holds these objects, in this order. */
static int same_objects(PyObject *tuple, PyObject *const *items, Py_ssize_t n) {
    if (tuple == NULL || PyTuple_GET_SIZE(tuple) != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyTuple_GET_ITEM(tuple, i) != items[i])
            return 0;
    }
    return 1;
}

static PyObject *tuple_of(PyObject *const *items, Py_ssize_t n) {
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    return tuple;
}

/* frozenset(d) of a dict d holding the keys in this order (AudioSelection.selected): its table
 * is laid out as Python's own. */
static PyObject *frozenset_of_dict(PyObject *keys) {
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        if (PyDict_SetItem(dict, PyTuple_GET_ITEM(keys, i), Py_None) < 0) {
            Py_DECREF(dict);
            return NULL;
        }
    }
    PyObject *made = PyFrozenSet_New(dict);
    Py_DECREF(dict);
    return made;
}

/* frozenset(s) of a set s the keys were added to in this order (`unlevelled`). */
static PyObject *frozenset_of_set(PyObject *keys) {
    PyObject *set = PySet_New(NULL);
    if (set == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        if (PySet_Add(set, PyTuple_GET_ITEM(keys, i)) < 0) {
            Py_DECREF(set);
            return NULL;
        }
    }
    PyObject *made = PyFrozenSet_New(set);
    Py_DECREF(set);
    return made;
}

/* frozenset(generator) of the keys in this order (`speaking`). */
static PyObject *frozenset_of_iteration(PyObject *keys) {
    return PyFrozenSet_New(keys);
}

/* `*made` made by make() from `items`: kept when they are the objects it was made from. */
static int remake(PyObject **from, PyObject **made, PyObject *const *items, Py_ssize_t n,
                  PyObject *(*make)(PyObject *)) {
    if (*made != NULL && same_objects(*from, items, n))
        return 0;
    PyObject *tuple = tuple_of(items, n);
    if (tuple == NULL)
        return -1;
    PyObject *result = make(tuple);
    if (result == NULL) {
        Py_DECREF(tuple);
        return -1;
    }
    Py_XSETREF(*from, tuple);
    Py_XSETREF(*made, result);
    return 0;
}

/* Everything after the loop over the producers. */
static PyObject *decide(AudioTick *self, double now) {
    Py_ssize_t n = self->score_count;
    if (voices_update(self, &self->voices, self->scores, n, now) < 0 ||
            speaker_update(self, now) < 0 ||
            RESERVE(self->candidates, self->candidates_capacity, n) < 0)
        return NULL;

    /* selection.update(scores.keys(), voices) */
    for (Py_ssize_t i = 0; i < n; i++) {
        self->candidates[i].k = self->scores[i].k;
        describe(&self->candidates[i], &self->voices, self->scores[i].voice);
    }
    if (selection_update(self, &self->selection, self->candidates, n, now) < 0)
        return NULL;
    Selection *selection = &self->selection;
    if (RESERVE(self->objects, self->objects_capacity, selection->count) < 0)
        return NULL;
    for (Py_ssize_t j = 0; j < selection->count; j++)
        self->objects[j] = selection->items[j].k.key;
    if (remake(&self->forwarded_from, &self->forwarded, self->objects, selection->count,
               frozenset_of_dict) < 0)
        return NULL;
    PyObject *forwarded = self->forwarded;

    /* narrow.update(forwarded, voices): the keys in the frozenset's order */
    Py_ssize_t position = 0, m = 0, hint = 0;
    PyObject *key;
    Py_hash_t hash;
    while (_PySet_NextEntry(forwarded, &position, &key, &hash)) {
        Py_ssize_t j = find(self->voices.items, sizeof(Voice), self->voices.count, key, hash,
                            hint);
        if (j == -2)
            return NULL;
        hint = j + 1;
        self->candidates[m].k.key = key;
        self->candidates[m].k.hash = hash;
        describe(&self->candidates[m++], &self->voices, j);
    }
    if (selection_update(self, &self->narrow, self->candidates, m, now) < 0)
        return NULL;

    /* ranked: the narrow selection, the longest held first (sorted is stable); in silence the
     * last ranked still forwarded */
    Selection *narrow = &self->narrow;
    Py_ssize_t ranks = narrow->count;
    if (RESERVE(self->indices, self->indices_capacity, ranks) < 0 ||
            RESERVE(self->objects, self->objects_capacity, ranks) < 0)
        return NULL;
    Py_ssize_t *order = self->indices;
    for (Py_ssize_t a = 0; a < ranks; a++) {
        Py_ssize_t b = a;
        for (; b > 0 && narrow->items[order[b - 1]].at > narrow->items[a].at; b--)
            order[b] = order[b - 1];
        order[b] = a;
    }
    for (Py_ssize_t a = 0; a < ranks; a++)
        self->objects[a] = narrow->items[order[a]].k.key;
    if (ranks == 0 && self->last_ranked != NULL) {
        for (Py_ssize_t a = 0; a < PyTuple_GET_SIZE(self->last_ranked); a++) {
            PyObject *last = PyTuple_GET_ITEM(self->last_ranked, a);
            int in = PySet_Contains(forwarded, last);
            if (in < 0)
                return NULL;
            if (in) {
                if (RESERVE(self->objects, self->objects_capacity, ranks + 1) < 0)
                    return NULL;
                self->objects[ranks++] = last;
            }
        }
    }
    if (self->last_ranked == NULL || !same_objects(self->last_ranked, self->objects, ranks)) {
        PyObject *ranked = tuple_of(self->objects, ranks);
        if (ranked == NULL)
            return NULL;
        Py_XSETREF(self->last_ranked, ranked);
    }

    /* The producers learn whether they are forwarded. set_selected runs Python: the objects
     * kept above stay alive through it (nothing re-enters this tick). */
    for (Py_ssize_t e = 0; e < self->entry_count; e++) {
        Entry *entry = &self->entries[e];
        if (entry->state != UNMUTED)
            continue;
        int in = PySet_Contains(forwarded, entry->id);
        if (in < 0 || set_selected(entry->producer, in) < 0)
            return NULL;
    }

    /* speaking: the unmuted loud within SPEAKING_HOLD (Producer.speaking, read after the
     * selection as Python reads it), and those without levels */
    Py_ssize_t speakers = 0, unlevelled = 0;
    if (RESERVE(self->objects, self->objects_capacity, self->entry_count) < 0)
        return NULL;
    for (Py_ssize_t e = 0; e < self->entry_count; e++) {
        Entry *entry = &self->entries[e];
        if (entry->state != UNMUTED)
            continue;
        double until = now + self->speaking_hold;
        if (!entry->loud) {
            PyObject *value = get_attribute(entry->producer, A_LOUD_UNTIL);
            if (value == NULL)
                return NULL;
            until = PyFloat_AsDouble(value);
            Py_DECREF(value);
            if (until == -1.0 && PyErr_Occurred())
                return NULL;
        }
        if (now < until)
            self->objects[speakers++] = entry->owner;
    }
    if (remake(&self->speaking_from, &self->speaking, self->objects, speakers,
               frozenset_of_iteration) < 0)
        return NULL;
    for (Py_ssize_t e = 0; e < self->entry_count; e++) {
        if (self->entries[e].state == UNLEVELLED)
            self->objects[unlevelled++] = self->entries[e].id;
    }
    if (remake(&self->unlevelled_from, &self->unlevelled, self->objects, unlevelled,
               frozenset_of_set) < 0)
        return NULL;

    PyObject *fields[5] = {self->speaking, self->dominant ? self->dominant : Py_None,
                           self->forwarded, self->last_ranked, self->unlevelled};
    PyObject *last = self->last;
    if (last != NULL && same_objects(last, fields, 5))
        return Py_NewRef(last);
    /* what tuple.__new__(Activity, fields) makes (Activity declares no slots of its own) */
    PyObject *activity = self->activity->tp_alloc(self->activity, 5);
    if (activity == NULL)
        return NULL;
    for (int i = 0; i < 5; i++)
        PyTuple_SET_ITEM(activity, i, Py_NewRef(fields[i]));
    Py_XSETREF(self->last, Py_NewRef(activity));
    return activity;
}

static PyObject *audio_tick(AudioTick *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tick(producers, now) takes 2 arguments");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "AudioTick.tick called from inside a tick");
        return NULL;
    }
    self->busy = 1;
    self->entry_count = self->score_count = self->owner_count = 0;
    PyObject *result = NULL;
    if (read_producers(self, args[0], now) == 0)
        result = decide(self, now);
    for (Py_ssize_t e = 0; e < self->entry_count; e++) {
        Py_DECREF(self->entries[e].producer);
        Py_XDECREF(self->entries[e].id);
        Py_XDECREF(self->entries[e].owner);
    }
    self->entry_count = self->score_count = self->owner_count = 0;
    self->busy = 0;
    return result;
}

/* ---- What the twin test compares ---- */

static PyObject *voices_state(const Voices *voices) {
    PyObject *state = PyTuple_New(voices->count);
    for (Py_ssize_t j = 0; state != NULL && j < voices->count; j++) {
        const Voice *voice = &voices->items[j];
        PyObject *since = voice->has_since ? PyFloat_FromDouble(voice->since)
                                           : Py_NewRef(Py_None);
        PyObject *item = since == NULL ? NULL : Py_BuildValue(
            "(OdddN)", voice->k.key, voice->fast, voice->slow, voice->active_at, since);
        if (item == NULL)
            Py_CLEAR(state);
        else
            PyTuple_SET_ITEM(state, j, item);
    }
    return state;
}

static PyObject *selection_state(const Selection *selection) {
    PyObject *state = PyTuple_New(selection->count);
    for (Py_ssize_t j = 0; state != NULL && j < selection->count; j++) {
        PyObject *item = Py_BuildValue("(Od)", selection->items[j].k.key, selection->items[j].at);
        if (item == NULL)
            Py_CLEAR(state);
        else
            PyTuple_SET_ITEM(state, j, item);
    }
    return state;
}

/* state() -> (voices, owners' voices, dominant, dominant_since, ahead_since, selection, narrow,
 * last ranked): everything the tick keeps, each in its dict's order, for the twin test to
 * compare bit for bit with the Python objects' (decisions alone would seldom show a difference
 * in the last bit of an average). */
static PyObject *audio_tick_state(AudioTick *self, PyObject *unused) {
    PyObject *ahead = PyDict_New();
    for (Py_ssize_t j = 0; ahead != NULL && j < self->owners.count; j++) {
        const Voice *voice = &self->owners.items[j];
        if (!voice->has_ahead)
            continue;
        PyObject *since = PyFloat_FromDouble(voice->ahead_since);
        if (since == NULL || PyDict_SetItem(ahead, voice->k.key, since) < 0)
            Py_CLEAR(ahead);
        Py_XDECREF(since);
    }
    if (ahead == NULL)
        return NULL;
    PyObject *ranked = self->last_ranked ? Py_NewRef(self->last_ranked) : PyTuple_New(0);
    return Py_BuildValue("(NNOdNNNN)", voices_state(&self->voices), voices_state(&self->owners),
                         self->dominant ? self->dominant : Py_None, self->dominant_since, ahead,
                         selection_state(&self->selection), selection_state(&self->narrow),
                         ranked);
}

/* ---- The type ---- */

static PyObject *audio_tick_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"activity", "voices", "speaker", "speaking_hold", "selection",
                               "narrow", NULL};
    PyObject *activity;
    double speech, fast, slow, word_gap, onset, hold, handover, overtake, margin, speaking_hold;
    Py_ssize_t size, narrow_size;
    double hangover, selection_hold, selection_margin;
    double narrow_hangover, narrow_hold, narrow_margin;
    int everyone, narrow_everyone;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O!$(dddd)(ddddd)d(ndddp)(ndddp):AudioTick", keywords, &PyType_Type,
            &activity, &speech, &fast, &slow, &word_gap, &onset, &hold, &handover, &overtake,
            &margin, &speaking_hold, &size, &hangover, &selection_hold, &selection_margin,
            &everyone, &narrow_size, &narrow_hangover, &narrow_hold, &narrow_margin,
            &narrow_everyone))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)activity, &PyTuple_Type) ||
            ((PyTypeObject *)activity)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "activity must be a tuple class without slots");
        return NULL;
    }
    if (size < 1 || narrow_size < 1) {
        PyErr_SetString(PyExc_ValueError, "at least one audio producer must be forwarded");
        return NULL;
    }
    AudioTick *self = (AudioTick *)type->tp_alloc(type, 0);  /* zeroed */
    if (self == NULL)
        return NULL;
    self->activity = (PyTypeObject *)Py_NewRef(activity);
    self->speech = speech;
    self->fast = fast;
    self->slow = slow;
    self->word_gap = word_gap;
    self->onset = onset;
    self->hold = hold;
    self->handover = handover;
    self->overtake = overtake;
    self->margin = margin;
    self->speaking_hold = speaking_hold;
    self->dominant_since = -INFINITY;
    self->selection = (Selection){NULL, 0, 0, size, everyone, hangover, selection_hold,
                                  selection_margin};
    self->narrow = (Selection){NULL, 0, 0, narrow_size, narrow_everyone, narrow_hangover,
                               narrow_hold, narrow_margin};
    return (PyObject *)self;
}

static int audio_tick_traverse(AudioTick *self, visitproc visit, void *arg) {
    Py_VISIT(self->activity);
    Py_VISIT(self->dominant);
    Py_VISIT(self->last_ranked);
    Py_VISIT(self->forwarded);
    Py_VISIT(self->forwarded_from);
    Py_VISIT(self->speaking);
    Py_VISIT(self->speaking_from);
    Py_VISIT(self->unlevelled);
    Py_VISIT(self->unlevelled_from);
    Py_VISIT(self->last);
    for (Py_ssize_t j = 0; j < self->voices.count; j++)
        Py_VISIT(self->voices.items[j].k.key);
    for (Py_ssize_t j = 0; j < self->owners.count; j++)
        Py_VISIT(self->owners.items[j].k.key);
    for (Py_ssize_t j = 0; j < self->selection.count; j++)
        Py_VISIT(self->selection.items[j].k.key);
    for (Py_ssize_t j = 0; j < self->narrow.count; j++)
        Py_VISIT(self->narrow.items[j].k.key);
    return 0;
}

static int audio_tick_clear(AudioTick *self) {
    Py_CLEAR(self->activity);
    Py_CLEAR(self->dominant);
    Py_CLEAR(self->last_ranked);
    Py_CLEAR(self->forwarded);
    Py_CLEAR(self->forwarded_from);
    Py_CLEAR(self->speaking);
    Py_CLEAR(self->speaking_from);
    Py_CLEAR(self->unlevelled);
    Py_CLEAR(self->unlevelled_from);
    Py_CLEAR(self->last);
    clear_voices(&self->voices);
    clear_voices(&self->owners);
    clear_places(self->selection.items, &self->selection.count);
    clear_places(self->narrow.items, &self->narrow.count);
    return 0;
}

static void audio_tick_dealloc(AudioTick *self) {
    PyObject_GC_UnTrack(self);
    audio_tick_clear(self);
    PyMem_Free(self->voices.items);
    PyMem_Free(self->owners.items);
    PyMem_Free(self->selection.items);
    PyMem_Free(self->narrow.items);
    PyMem_Free(self->entries);
    PyMem_Free(self->scores);
    PyMem_Free(self->by_owner);
    PyMem_Free(self->candidates);
    PyMem_Free(self->places);
    PyMem_Free(self->indices);
    PyMem_Free(self->objects);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef audio_tick_methods[] = {
    {"tick", (PyCFunction)(void (*)(void))audio_tick, METH_FASTCALL,
     "tick(producers, now) -> Activity: AudioActivity.tick (see the top of _audio.c)."},
    {"state", (PyCFunction)audio_tick_state, METH_NOARGS,
     "state() -> everything the tick keeps, for the twin test (see audio_tick_state)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AudioTickType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "townhall.sfu._fastsend.AudioTick",
    .tp_doc = "AudioTick(activity, *, voices=(speech, fast, slow, word_gap), speaker=(onset, "
              "hold, handover, overtake, margin), speaking_hold, selection=(size, hangover, "
              "hold, margin, everyone_when_few), narrow=(...)): one router's audio activity, "
              "AudioActivity.tick in C (see _audio.c).",
    .tp_basicsize = sizeof(AudioTick),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = audio_tick_new,
    .tp_dealloc = (destructor)audio_tick_dealloc,
    .tp_traverse = (traverseproc)audio_tick_traverse,
    .tp_clear = (inquiry)audio_tick_clear,
    .tp_methods = audio_tick_methods,
};

static int intern(PyObject **name, const char *text) {
    if (*name == NULL)
        *name = PyUnicode_InternFromString(text);
    return *name == NULL ? -1 : 0;
}

int audio_add_type(PyObject *module) {
    for (int i = 0; i < A_COUNT; i++) {
        if (intern(&attribute_names[i], attribute_texts[i]) < 0)
            return -1;
    }
    if (intern(&s_audio, "audio") < 0 || intern(&s_set_selected, "set_selected") < 0)
        return -1;
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return -1;
    if (PyType_Ready(&AudioTickType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "AudioTick", (PyObject *)&AudioTickType);
}
