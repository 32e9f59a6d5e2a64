import { distance, type Point } from './geometry';

export interface Polygon {
  vertices: Point[];
}

// Perimeter of a closed polygon: the sum of its edge lengths.
export function perimeter(p: Polygon): number {
  let total = 0;
  for (let i = 0; i < p.vertices.length; i++) {
    const a = p.vertices[i];
    const b = p.vertices[(i + 1) % p.vertices.length];
    
  }
  return total;
}
