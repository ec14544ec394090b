/**
 * A set of plain listeners: `add` returns the call that removes one; `emit`
 * calls each, and one listener's throw is its own (the others still run).
 */
export interface Listeners<A extends ReadonlyArray<unknown>> {
  readonly add: (listener: (...args: A) => void) => () => void
  readonly emit: (...args: A) => void
}

export const makeListeners = <A extends ReadonlyArray<unknown>>(): Listeners<A> => {
  const set = new Set<(...args: A) => void>()
  return {
    add: (listener) => {
      set.add(listener)
      return () => void set.delete(listener)
    },
    emit: (...args) => {
      for (const listener of set) {
        try {
          listener(...args)
        } catch {
          // A listener's failure is its own.
        }
      }
    }
  }
}
